"""DDP: a real ``python -m medimg.train trainer=ddp_sim`` run (2 CPU processes over gloo) evaluates every test image
exactly once, writes one run folder, and reports the same metrics and calibration as a single process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
TINY_DDP = [
    "experiment=synthetic", "trainer=ddp_sim", "trainer.precision=32", "trainer.max_epochs=1",
    "backbone.weights=null", "dataset.num_images=160", "dataset.img_size=32", "dataset.num_workers=0",
    "dataset.batch_size=32", "dataset.eval_batch_size=8", "trainer.enable_progress_bar=false", "logger=csv",
]


def test_ddp_sim_run_matches_single_process(tmp_path, data_dir):
    from hydra import compose, initialize_config_dir

    from medimg.cli import CONF_DIR
    from medimg.evaluate import evaluate

    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "medimg.train", *TINY_DDP, f"paths.root_dir={tmp_path}",
           f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "Initializing distributed: GLOBAL_RANK: 1, MEMBER: 2/2" in proc.stdout + proc.stderr

    # one run folder, written once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert (proc.stdout + proc.stderr).count("run folder:") == 1
    assert len(list(run.rglob("report.md"))) == 1 and (run / "checkpoints" / "best.ckpt").is_file()

    ddp_metrics = json.loads((run / "metrics.json").read_text())
    pred = pd.read_csv(run / "predictions.csv")
    split = pd.read_csv(data_dir / "synthetic" / "n160-px32-seed0" / "medimg_splits.csv")
    test_paths = split.loc[split["split"] == "test", "path"]
    # 23 test images over 2 ranks: a padding sampler would repeat one; every image must count once
    assert len(test_paths) % 2 == 1
    assert pred["path"].is_unique and sorted(pred["path"]) == sorted(test_paths)
    assert sum(v for k, v in ddp_metrics.items() if k.endswith("/support")) == len(test_paths)

    # the same checkpoint in one process: the same calibration (refitted on validation) and the same metrics
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/single", f"paths.data_dir={data_dir}",
            f"ckpt_path={run / 'checkpoints' / 'best.ckpt'}", f"output_dir={tmp_path}/single", "recalibrate=true",
            "trainer=cpu", "trainer.precision=32", "trainer.enable_progress_bar=false", "logger=csv"])
    single = evaluate(cfg)  # the run's own data set, read from run/.hydra/config.yaml
    single = {k.removeprefix("refitted/"): v for k, v in single.items() if k.startswith("refitted/")}
    ddp_metrics = {k: v for k, v in ddp_metrics.items() if k.startswith("test/")}  # a training run adds val/*_best
    assert set(single) == set(ddp_metrics)
    for k, v in ddp_metrics.items():
        assert single[k] == pytest.approx(v, abs=1e-6), k
