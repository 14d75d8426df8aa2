"""Sweeps as users run them: an Optuna search with its study file and a resume, the joblib and submitit launchers,
a failing job in the summary, DDP inside sweep jobs, and MLflow tracking read back from its store.

The sweeps run ``python -m medimg.train`` in real processes on the project's configs with the sweep callbacks
included by ``conf/hydra/default.yaml`` and ``hparams_search`` in ``conf/train.yaml``'s defaults (the copy
below adds those two lines where the configs do not have them yet).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from omegaconf import OmegaConf

from medimg.sweeps.ddp import job_argv, starts_ddp_processes
from medimg.sweeps.jobs import STATUS_FILE, read_jobs
from medimg.sweeps.summary import summary_frame, write_summary
from tests.conftest import TINY, compose_train

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- fast: the summary, the DDP command line


def make_job(sweep: Path, name: str, num: int, overrides: list[str], status: str | None,
             metrics: dict | None = None, error: str | None = None) -> Path:
    """A job folder as Hydra and the summary callback leave it."""
    job = sweep / name
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump({"hydra": {"job": {"num": num}}}))
    if status:
        (job / STATUS_FILE).write_text(json.dumps({"status": status, "error": error, "value": None}))
    if metrics:
        (job / "metrics.json").write_text(json.dumps(metrics))
    return job


def test_summary_rows_best_job_and_swept_parameters(tmp_path):
    make_job(tmp_path, "0", 0, ["lr=0.1", "seed=1", "paths.root_dir=/x"], "ok",
             {"test/auroc": 0.7, "test/loss": 0.9, "test/per_class/a/f1": 0.5})
    make_job(tmp_path, "1", 1, ["lr=0.01", "seed=1", "paths.root_dir=/x"], "ok", {"test/auroc": 0.8, "test/loss": 1.2})
    make_job(tmp_path, "2", 2, ["lr=-1", "seed=1", "paths.root_dir=/x"], "failed", error="ConfigError: lr must be > 0")
    make_job(tmp_path, "3", 3, ["lr=0.5", "seed=1", "paths.root_dir=/x"], None)  # still running, or killed
    jobs = read_jobs(tmp_path)
    frame, params = summary_frame(jobs, "test/auroc", "maximize")
    assert params == ["lr"]  # seed and paths are the same in every job
    assert list(frame["job"]) == [0, 1, 2, 3]
    assert list(frame["status"]) == ["ok", "ok", "failed", "incomplete"]
    assert list(frame["best"]) == [False, True, False, False]
    assert frame.loc[2, "error"] == "ConfigError: lr must be > 0" and pd.isna(frame.loc[2, "test/auroc"])
    assert "test/per_class/a/f1" not in frame.columns and frame.loc[0, "test/loss"] == 0.9
    by_loss, _ = summary_frame(jobs, "test/loss", "minimize")
    assert list(by_loss["best"]) == [True, False, False, False]
    written = write_summary(tmp_path, "test/auroc", "maximize")
    assert (tmp_path / "summary.png").stat().st_size > 10_000
    back = pd.read_csv(tmp_path / "summary.csv")
    assert list(back["status"]) == list(written["status"]) and list(back["lr"]) == [0.1, 0.01, -1, 0.5]


def test_ddp_job_command_is_the_job_alone():
    cfg = OmegaConf.create({"hydra": {"overrides": {
        "hydra": ["hydra.mode=MULTIRUN", "hydra.sweep.dir=/s", "hydra/launcher=parallel", "hydra.verbose=true"],
        "task": ["trainer=ddp_sim", "seed=2", "+hparams_search=full_optuna"]}}})
    assert job_argv(cfg) == ["hydra.verbose=true", "trainer=ddp_sim", "seed=2", "+hparams_search=full_optuna",
                             "hydra.mode=RUN"]
    trainer = {"strategy": "ddp", "devices": 2, "num_nodes": 1}
    assert starts_ddp_processes(OmegaConf.create({"trainer": trainer}))
    assert starts_ddp_processes(OmegaConf.create({"trainer": {**trainer, "strategy": "auto", "devices": [0, 1]}}))
    assert not starts_ddp_processes(OmegaConf.create({"trainer": {**trainer, "devices": 1}}))
    assert not starts_ddp_processes(OmegaConf.create({"trainer": {**trainer, "strategy": "ddp_spawn"}}))


def test_unknown_logger_is_a_config_error(tmp_path):
    from medimg.errors import ConfigError
    from medimg.training.loggers import build_loggers

    with pytest.raises(ConfigError, match="tensorboard, csv or mlflow"):
        build_loggers({"wandb": {}}, tmp_path, "head")


# ---------------------------------------------------------------- slow: real sweeps


@pytest.fixture(scope="module")
def conf_dir() -> Path:
    """The project's own configs (sweep callbacks on for every multirun, the hparams_search group listed)."""
    return REPO / "conf"


def run_sweep(args: list[str], root: Path, data_dir: Path, conf: Path, expect_ok: bool = True,
              timeout: int = 600, base: list[str] = TINY) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDIMG_ROOT": str(root), "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg",
           "PYTHONPATH": str(REPO)}
    flags, overrides = [a for a in args if a.startswith("-")], [a for a in args if not a.startswith("-")]
    cmd = [sys.executable, "-m", "medimg.train", *flags, "-cp", str(conf), *base, *overrides,
           f"paths.root_dir={root}", f"paths.data_dir={data_dir}"]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    if expect_ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def study_trials(db: Path, name: str) -> list:
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{db}").trials


@pytest.mark.parametrize("search", ["head_optuna", "full_optuna", "two_stage_optuna"])
def test_every_search_space_names_keys_of_its_recipe(search, conf_dir):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose("train", overrides=[f"hparams_search={search}"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert len(params) >= 4 and cfg.hydra.sweeper.study_name == search
    for key in params:
        assert OmegaConf.select(cfg, key, default=None) is not None, f"{search}: {key} is not in the config"
    assert cfg.stage.name == search.removesuffix("_optuna") and "sweep_summary" in cfg.hydra.callbacks


@pytest.fixture(scope="module")
def optuna_sweep(tmp_path_factory, data_dir, conf_dir) -> Path:
    """A 3-trial Optuna search (hparams_search=head_optuna, the cheapest recipe) into a fixed sweep folder."""
    root = tmp_path_factory.mktemp("optuna")
    run_sweep(["hparams_search=head_optuna", "hydra.sweeper.n_trials=3", f"hydra.sweep.dir={root / 'sweep'}"],
              root, data_dir, conf_dir)
    return root / "sweep"


@pytest.mark.slow
def test_optuna_search_writes_runs_study_and_best_parameters(optuna_sweep):
    runs = sorted(p.parent for p in optuna_sweep.glob("*/metrics.json"))
    assert len(runs) == 3
    trials = study_trials(optuna_sweep / "optuna.db", "head_optuna")
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3
    params = {"stage.phases.head.lr", "stage.phases.head.epochs", "optim.weight_decay", "backbone.dropout"}
    assert all(set(t.params) == params for t in trials)
    # each trial's parameters reached its run: the run's overrides and the value it returned
    for run in runs:
        overrides = yaml.safe_load((run / ".hydra" / "overrides.yaml").read_text())
        trial = next(t for t in trials if f"stage.phases.head.lr={t.params['stage.phases.head.lr']}" in overrides)
        assert trial.value == pytest.approx(json.loads((run / "metrics.json").read_text())["val/auroc_best"])
    best = yaml.safe_load((optuna_sweep / "optimization_results.yaml").read_text())
    assert set(best["best_params"]) == params and best["best_value"] == max(t.value for t in trials)
    summary = pd.read_csv(optuna_sweep / "summary.csv")
    assert len(summary) == 3 and (summary["status"] == "ok").all()
    assert summary.loc[summary["best"], "val/auroc_best"].item() == pytest.approx(best["best_value"])
    assert set(params) <= set(summary.columns) and (optuna_sweep / "summary.png").is_file()


@pytest.mark.slow
def test_resumed_search_adds_trials_to_the_same_study(optuna_sweep, data_dir, conf_dir):
    before = {p.parent.name for p in optuna_sweep.glob("*/metrics.json")}
    run_sweep(["hparams_search=head_optuna", "hydra.sweeper.n_trials=1", f"hydra.sweep.dir={optuna_sweep}"],
              optuna_sweep.parent, data_dir, conf_dir)
    trials = study_trials(optuna_sweep / "optuna.db", "head_optuna")
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    runs = sorted(p.parent for p in optuna_sweep.glob("*/metrics.json"))
    assert len(runs) == 4 and before < {r.name for r in runs}  # the earlier trials' folders are untouched
    assert len(pd.read_csv(optuna_sweep / "summary.csv")) == 4


@pytest.mark.slow
def test_failed_job_is_recorded_and_the_sweep_goes_on_with_ddp_jobs(tmp_path, data_dir, conf_dir):
    """Job 0 fails (a learning rate the run refuses); job 1 still runs, as DDP over 2 CPU processes."""
    sweep = tmp_path / "sweep"
    proc = run_sweep(["-m", "stage=head", "trainer=ddp_sim", "stage.phases.head.lr=-1.0,0.001",
                      f"hydra.sweep.dir={sweep}"], tmp_path, data_dir, conf_dir, expect_ok=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1  # Hydra reports the failed job once the sweep has run every job
    assert out.count("Launching 2 jobs locally") == 1  # the DDP process ran its job, not the sweep again
    assert "All distributed processes registered. Starting with 2 processes" in out
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary["status"]) == ["failed", "ok"] and list(summary["best"]) == [False, True]
    assert "lr" in summary.loc[0, "error"] and pd.isna(summary.loc[0, "test/auroc"])
    metrics = json.loads((sweep / "1" / "metrics.json").read_text())
    assert summary.loc[1, "test/auroc"] == pytest.approx(metrics["test/auroc"])
    assert list(summary["stage.phases.head.lr"]) == [-1.0, 0.001]
    # one run folder per job, both ranks logging into it, nothing written anywhere else
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep"]
    assert sorted(p.name for p in sweep.iterdir() if not p.name.startswith(".")) == [
        "0", "1", "multirun.yaml", "summary.csv", "summary.png"]
    assert out.count("GLOBAL_RANK: 1") == 1
    assert (sweep / "1" / "train.log").read_text().count("dataset synthetic: 160 images") == 2  # rank 0 and rank 1


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "local"])
def test_launchers_run_two_real_jobs(launcher, tmp_path, data_dir, conf_dir):
    """With the loader's worker processes (dataset.num_workers: 2, not TINY's 0): inside a joblib worker they
    start with loky's start method unless medimg picks another (data/workers.py). ``parallel`` is the joblib
    launcher with medimg's n_jobs, so it runs the joblib path; ``local`` is submitit's."""
    sweep = tmp_path / "sweep"
    base = [a for a in TINY if not a.startswith("dataset.num_workers")] + ["dataset.num_workers=2"]
    proc = run_sweep(["-m", "stage=head", f"hydra/launcher={launcher}", "seed=1,2", f"hydra.sweep.dir={sweep}"],
                     tmp_path, data_dir, conf_dir, base=base)
    summary = pd.read_csv(sweep / "summary.csv")
    assert list(summary["status"]) == ["ok", "ok"] and sorted(summary["seed"]) == [1, 2]
    for job in ("0", "1"):
        assert (sweep / job / "metrics.json").is_file() and (sweep / job / "checkpoints" / "best.ckpt").is_file()
    if launcher != "local":
        assert "Joblib.Parallel(n_jobs=" in proc.stdout + proc.stderr
    else:
        logs = sorted((sweep / ".submitit").glob("*/*_log.out"))
        assert len(logs) == 2 and all("Job completed successfully" in p.read_text() for p in logs)


@pytest.mark.slow
def test_slurm_preset_reaches_sbatch_with_one_gpu_per_job(tmp_path, data_dir, conf_dir, monkeypatch):
    """No cluster here: stand-ins for srun/sbatch let submitit write the job array's sbatch file, then refuse it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text("#!/bin/sh\necho 'sbatch: no cluster here' >&2\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    sweep = tmp_path / "sweep"
    proc = run_sweep(["-m", "hydra/launcher=slurm", "hydra.launcher.partition=gpu", "seed=1,2,3",
                      f"hydra.sweep.dir={sweep}"], tmp_path, data_dir, conf_dir, expect_ok=False)
    assert proc.returncode != 0 and "sbatch: no cluster here" in proc.stderr
    script = next((sweep / ".submitit").glob(".submission_file_*.sh")).read_text()
    for flag in ("--array=0-2%3", "--gpus-per-node=1", "--ntasks-per-node=1", "--cpus-per-task=8", "--mem=32GB",
                 "--time=240", "--partition=gpu", "--job-name=train"):
        assert f"#SBATCH {flag}\n" in script, f"{flag} not in\n{script}"


# ---------------------------------------------------------------- slow: MLflow


@pytest.mark.slow
def test_mlflow_logger_fills_a_local_store(tmp_path, data_dir, monkeypatch):
    from mlflow.tracking import MlflowClient

    import medimg.training.trainer as trainer_module
    from medimg.train import train
    from medimg.training.loggers import RUN_DIR_TAG, build_loggers

    monkeypatch.setattr(trainer_module, "build_loggers", build_loggers, raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = f"file:{tmp_path / 'mlruns'}"
    run = tmp_path / "run"
    cfg = compose_train(run, data_dir, [*TINY, "stage=two_stage", "logger=mlflow",
                                        f"logger.mlflow.tracking_uri={store}", "task_name=mlflow_test"])
    metrics = train(cfg)

    client = MlflowClient(store)
    experiment = client.get_experiment_by_name("mlflow_test")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1  # both phases and the test logged into one MLflow run
    logged = runs[0]
    assert logged.data.tags[RUN_DIR_TAG] == str(run.resolve())
    assert logged.data.metrics["test/auroc"] == pytest.approx(metrics["test/auroc"])
    assert {"head/val/auroc", "finetune/val/auroc", "head/train/loss_epoch"} <= set(logged.data.metrics)
    assert logged.data.params["stage.name"] == "two_stage" and logged.info.status == "FINISHED"
    history = client.get_metric_history(logged.info.run_id, "finetune/val/auroc")
    assert len(history) == 1 and 0.0 <= history[0].value <= 1.0
