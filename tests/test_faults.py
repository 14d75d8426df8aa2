"""Faults a real user meets: a kill at any moment, two runs started together, a resume with other settings.

Every run here is a real ``python -m medimg.train`` process. A killed run resumed from ``last.ckpt`` must end
with exactly the metrics of the same run uninterrupted (the data order, augmentation and dropout of an epoch
depend only on the seed, the phase and the epoch; ``last.ckpt`` holds every completed epoch).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
# two phases on images (the head phase too, so that its epochs take long enough to be killed inside)
RUN = ["backbone.weights=null", "dataset.num_images=160", "dataset.img_size=32", "dataset.num_workers=2",
       "dataset.batch_size=16", "trainer.enable_progress_bar=false", "logger=csv", "stage=two_stage",
       "stage.phases.head.feature_cache=false", "stage.phases.head.epochs=4", "stage.phases.finetune.epochs=4",
       "stage.phases.finetune.min_steps=0", "stage.phases.finetune.patience_min_steps=0",
       "callbacks.early_stopping.enabled=false", "evaluation.gallery_per_class=0", "evaluation.figures=false",
       "dataset.batch_augment=true",  # the GPU default (whole batches, seeded per image) on the CPU
       "trainer.val_min_steps=14"]  # 7 steps an epoch: validated and checkpointed every 2 epochs (the cadence)
PHASE_STEPS = 4 * 7  # optimiser steps of each phase (4 epochs of 7)


def train_cmd(args: list[str], root: Path, data_dir: Path) -> tuple[list[str], dict[str, str]]:
    env = {**os.environ, "MEDIMG_ROOT": str(root), "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    return [sys.executable, "-m", "medimg.train", *args, f"paths.data_dir={data_dir}"], env


def run_train(args: list[str], root: Path, data_dir: Path, ok: bool = True) -> subprocess.CompletedProcess:
    cmd, env = train_cmd(args, root, data_dir)
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=900)
    if ok:
        assert proc.returncode == 0, f"{' '.join(cmd)}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def metrics(run: Path) -> dict[str, float]:
    return json.loads((run / "metrics.json").read_text())


def kill_when(run: Path, root: Path, data_dir: Path, phase: str, completed: bool, delay: float) -> dict:
    """Start the run, SIGKILL it ``delay`` s after ``last.ckpt`` first shows ``phase`` (done or not); return the
    medimg state of the ``last.ckpt`` it left."""
    cmd, env = train_cmd([*RUN, f"hydra.run.dir={run}"], root, data_dir)
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    last, seen = run / "checkpoints" / "last.ckpt", None
    try:
        while proc.poll() is None:
            if last.exists() and last.stat().st_mtime_ns != seen:
                seen = last.stat().st_mtime_ns
                ckpt = torch.load(last, map_location="cpu", weights_only=True)
                state = ckpt["medimg"]
                # mid-phase: a checkpoint before the phase's last validation, so the kill lands inside the phase
                inside = completed or ckpt.get("global_step", 0) < PHASE_STEPS
                if state["phase"]["name"] == phase and state["phase_completed"] == completed and inside:
                    time.sleep(delay)
                    os.killpg(proc.pid, signal.SIGKILL)
                    break
            time.sleep(0.02)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    return torch.load(last, map_location="cpu", weights_only=True)["medimg"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, data_dir):
    root = tmp_path_factory.mktemp("faults")
    run_train([*RUN, f"hydra.run.dir={root / 'whole'}"], root, data_dir)
    return root, metrics(root / "whole")


@pytest.mark.parametrize("case", ["mid_head", "phase_boundary", "mid_finetune"])
def test_a_killed_run_resumes_to_the_same_metrics(case, uninterrupted, data_dir):
    root, whole = uninterrupted
    phase, completed, delay = {"mid_head": ("head", False, 0.3), "phase_boundary": ("head", True, 0.0),
                               "mid_finetune": ("finetune", False, 0.3)}[case]
    run = root / case
    left = kill_when(run, root, data_dir, phase, completed, delay)
    assert not (run / "metrics.json").exists() and left["phase"]["name"] == phase
    for ckpt in (run / "checkpoints").glob("*.ckpt"):  # whatever the kill interrupted, every file is whole
        torch.load(ckpt, map_location="cpu", weights_only=True)
    (run / "checkpoints" / ".best.ckpt.killed.tmp").write_bytes(b"half")  # as a kill mid-write leaves one

    proc = run_train([f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}"], root, data_dir)
    where = "after phase 'head'" if completed else f"in phase '{phase}'"
    assert f"resuming {where}" in proc.stdout + proc.stderr
    resumed = metrics(run)
    assert not list(run.rglob(".*.tmp")), "a temporary file was left behind"
    assert set(resumed) == set(whole)
    for key, value in whole.items():
        assert resumed[key] == pytest.approx(value, abs=1e-6), key
    assert list((run / ".hydra").glob("resume-*/config.yaml")), "the resumed session's config is not in the run"


def test_resume_keeps_the_run_own_config_and_refuses_changes(uninterrupted, data_dir):
    root, _ = uninterrupted
    last = root / "whole" / "checkpoints" / "last.ckpt"
    before = {p: p.stat().st_mtime_ns for p in (root / "whole").rglob("*") if p.is_file()}
    for bad, says in ((["backbone=resnet50"], "backbone=resnet50 would change it"),
                      (["dataset.img_size=96"], "dataset.img_size: 32 -> 96"),
                      (["stage.phases.head.lr=0.1"], "stage.phases.head.lr"),
                      (["seed=7"], "seed: 42 -> 7")):
        proc = run_train([f"ckpt_path={last}", *bad], root, data_dir, ok=False)
        assert proc.returncode == 1 and says in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    after = {p: p.stat().st_mtime_ns for p in (root / "whole").rglob("*") if p.is_file()}
    changed = [p for p in before if after.get(p) != before[p]]
    assert not changed, f"a refused resume touched {changed}"


def test_an_explicit_run_dir_holding_a_finished_run_is_refused(uninterrupted, data_dir):
    root, _ = uninterrupted
    run = root / "whole"
    before = (run / ".hydra" / "config.yaml").read_bytes()
    proc = run_train([*RUN, f"hydra.run.dir={run}"], root, data_dir, ok=False)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "ckpt_path=" in proc.stderr and "choose" in proc.stderr and "another folder" in proc.stderr
    assert (run / ".hydra" / "config.yaml").read_bytes() == before  # Hydra wrote nothing into it


def test_two_runs_started_together_get_their_own_folders(tmp_path, data_dir):
    tiny = [a for a in RUN if "epochs" not in a] + ["trainer.max_epochs=1"]

    def start(seed: int, root: Path) -> subprocess.CompletedProcess:
        return run_train([*tiny, f"seed={seed}", "dataset.num_workers=0"], root, data_dir)

    with ThreadPoolExecutor(2) as pool:  # the same second: the same <date>/<time> part of the folder name
        together = list(pool.map(start, (1, 2), (tmp_path, tmp_path)))
    runs = sorted((tmp_path / "outputs").glob("train/*/*"))
    assert len(runs) == 2, runs
    for proc in together:
        out = proc.stdout + proc.stderr
        assert "GPU available" not in out and "TPU available" not in out  # Lightning's boilerplate stays out
    by_seed = {json.loads((r / "run.json").read_text())["pid"]: r for r in runs}
    assert len(by_seed) == 2
    for seed in (1, 2):  # the same metrics as that seed run alone
        alone_root = tmp_path / f"alone{seed}"
        alone_root.mkdir()
        start(seed, alone_root)
        (alone,) = (alone_root / "outputs").glob("train/*/*")
        (mine,) = [r for r in runs if f"seed={seed}" in (r / ".hydra" / "overrides.yaml").read_text()]
        assert metrics(mine) == pytest.approx(metrics(alone), abs=1e-6)
