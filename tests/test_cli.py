"""The command line as users run it: printed config, a 2-job sweep, DDP on two CPU processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY

pytestmark = pytest.mark.slow


def run_cli(args: list[str], cwd: Path, data_dir: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDIMG_ROOT": str(cwd), "PYTHONWARNINGS": "ignore"}
    cmd = [sys.executable, "-m", "medimg.train", *args, f"paths.data_dir={data_dir}"]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return proc


def test_cfg_job_prints_the_composed_config(tmp_path, data_dir):
    out = run_cli(["--cfg", "job", "backbone=resnet50", "stage=head"], tmp_path, data_dir).stdout
    assert "name: resnet50" in out and "name: head" in out and "optimized_metric: test/auroc" in out


def test_two_job_multirun_makes_one_folder_per_job(tmp_path, data_dir):
    proc = run_cli(["-m", *TINY, "stage=scratch", "seed=1,2"], tmp_path, data_dir)
    jobs = sorted(p.parent for p in (tmp_path / "multirun").rglob("metrics.json"))
    assert len(jobs) == 2, proc.stdout[-2000:]
    assert jobs[0].parent == jobs[1].parent and {p.name for p in jobs} == {"0", "1"}
    for job in jobs:
        assert (job / ".hydra" / "overrides.yaml").exists() and (job / "checkpoints" / "best.ckpt").exists()
    assert "seed=1" in (jobs[0] / ".hydra" / "overrides.yaml").read_text()


def test_ddp_sim_two_processes_one_run_folder(tmp_path, data_dir):
    proc = run_cli([*TINY, "stage=two_stage", "trainer=ddp_sim", "hydra.run.dir=outputs/ddp"], tmp_path, data_dir)
    run = tmp_path / "outputs" / "ddp"
    assert "distributed_backend=gloo" in proc.stdout + proc.stderr
    assert "All distributed processes registered" in proc.stdout + proc.stderr
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["test/auroc"] <= 1.0
    assert (run / "checkpoints" / "head-best.ckpt").exists() and (run / "checkpoints" / "finetune-best.ckpt").exists()
    # one run folder: nothing else was created beside it
    assert [p.name for p in (tmp_path / "outputs").iterdir()] == ["ddp"]
    assert not (tmp_path / "multirun").exists()
