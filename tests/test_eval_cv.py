"""K-fold cross-validation: a real ``python -m medimg.train -m dataset.num_folds=2 dataset.fold=0,1`` sweep, then
``medimg.evaluate cv_dir=...``: mean/std over folds and the fold ensemble on the shared test split."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medimg.evaluation.cross_validation import aggregate

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["nevus", "melanoma", "keratosis", "vascular"]


def test_aggregate_mean_and_sample_std():
    mean, std, values = aggregate([{"a": 1.0, "b": 2.0}, {"a": 3.0, "b": 2.0}, {"a": 5.0}])
    assert mean == {"a": 3.0} and std == pytest.approx({"a": 2.0}) and values == {"a": [1.0, 3.0, 5.0]}
    assert aggregate([{"a": 0.5}])[1] == {"a": 0.0}


def test_cv_dir_without_runs_is_explained(tmp_path):
    from medimg.evaluation.cross_validation import find_fold_runs

    with pytest.raises(FileNotFoundError, match="dataset.num_folds=5"):
        find_fold_runs(tmp_path)


@pytest.mark.slow
def test_two_fold_sweep_and_ensemble(tmp_path, data_dir):
    from hydra import compose, initialize_config_dir

    from medimg.cli import CONF_DIR
    from medimg.evaluate import evaluate

    sweep = tmp_path / "cv"
    cmd = [sys.executable, "-m", "medimg.train", "-m", "experiment=synthetic", "dataset.num_folds=2",
           "dataset.fold=0,1", "trainer.max_epochs=1", "backbone.weights=null", "dataset.num_images=160",
           "dataset.img_size=32", "dataset.num_workers=0", "dataset.batch_size=32", "trainer.accelerator=cpu",
           "trainer.enable_progress_bar=false", "logger=csv", "evaluation.figures=false", f"paths.root_dir={tmp_path}",
           f"paths.data_dir={data_dir}", f"hydra.sweep.dir={sweep}"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    folds = [sweep / "0", sweep / "1"]
    fold_metrics = [json.loads((f / "metrics.json").read_text()) for f in folds]
    assert fold_metrics[0]["test/accuracy"] != fold_metrics[1]["test/accuracy"] or \
        fold_metrics[0]["test/nll"] != fold_metrics[1]["test/nll"]  # two different models

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path}/hydra", f"paths.data_dir={data_dir}",
            f"cv_dir={sweep}", "trainer=cpu", "trainer.enable_progress_bar=false", "logger=csv"])
    evaluate(cfg)

    summary = json.loads((sweep / "cv_metrics.json").read_text())
    assert summary["num_folds"] == 2
    for key in ("test/accuracy", "test/auroc", "test/ece_calibrated", "test/per_class/nevus/f1"):
        vals = [m[key] for m in fold_metrics]
        assert summary["mean"][key] == pytest.approx(np.mean(vals), abs=1e-12)
        assert summary["std"][key] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
        assert summary["per_fold"][key] == vals
    # the ensemble is the average of the folds' calibrated probabilities on the same test images
    preds = [pd.read_csv(f / "predictions.csv") for f in folds]
    ens = pd.read_csv(sweep / "ensemble" / "predictions.csv")
    assert (preds[0]["path"] == ens["path"]).all() and (preds[1]["path"] == ens["path"]).all()
    assert list(ens.columns) == ["path", "label", "prediction", "probability", *[f"p_{c}" for c in CLASSES],
                                 *[f"p_uncalibrated_{c}" for c in CLASSES]]  # the layout of every predictions.csv
    cols = [f"p_{c}" for c in CLASSES]  # the final (calibrated) probabilities, to 6 decimals
    np.testing.assert_allclose(ens[cols].to_numpy(), (preds[0][cols].to_numpy() + preds[1][cols].to_numpy()) / 2,
                               atol=2e-6)
    y = ens["label"].map(CLASSES.index).to_numpy()
    acc = float((ens[cols].to_numpy().argmax(1) == y).mean())
    assert summary["ensemble"]["test/accuracy_calibrated"] == pytest.approx(acc, abs=1e-6)
    report = (sweep / "report.md").read_text()
    assert "Cross-validation: 2 folds" in report and "±" in report and "ensemble/report.md" in report
    assert (sweep / "ensemble" / "figures" / "roc_curves.png").is_file()
