"""The end of a run: best.ckpt with its calibration is kept before the test split is evaluated, the best
validation score is what a search ranks by (also with test=false), and test/loss is the training objective."""

from __future__ import annotations

import json

import pytest
import torch

from medimg import train as train_module
from medimg.inference import load_trained
from medimg.train import train


def test_test_false_returns_the_best_validation_score_to_a_search(tiny_cfg, tmp_path):
    cfg = tiny_cfg("stage=full", "test=false", "optimized_metric=val/auroc_best")
    metrics = train(cfg)
    assert set(metrics) == {"val/auroc_best"} and 0.0 <= metrics["val/auroc_best"] <= 1.0
    run = tmp_path / "run"
    assert json.loads((run / "metrics.json").read_text()) == metrics
    assert not (run / "predictions.csv").exists()  # no test split was evaluated
    assert load_trained(run / "checkpoints" / "best.ckpt").calibration.fitted_on.startswith("validation split")


def test_a_failure_in_the_test_evaluation_keeps_the_calibrated_best_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the test evaluation broke")

    monkeypatch.setattr(train_module, "evaluate_split", broken)
    with pytest.raises(RuntimeError, match="the test evaluation broke"):
        train(tiny_cfg("stage=full"))
    trained = load_trained(tmp_path / "run" / "checkpoints" / "best.ckpt")
    assert trained.calibration.is_calibrated and trained.calibration.fitted_on.startswith("validation split")


def test_test_loss_is_the_training_objective_with_focal_loss(tiny_cfg, tmp_path):
    metrics = train(tiny_cfg("stage=full", "model.focal_gamma=2.0"))
    trained = load_trained(tmp_path / "run" / "checkpoints" / "best.ckpt")
    predictions = __import__("pandas").read_csv(tmp_path / "run" / "predictions.csv")
    probs = torch.tensor(predictions.filter(regex="^p_uncalibrated_").to_numpy(), dtype=torch.float32)
    targets = torch.tensor([trained.class_names.index(c) for c in predictions["label"]])
    objective = float(trained.model.loss(probs.log(), targets))  # log-softmax is softmax's logits up to a shift
    plain = float(torch.nn.functional.cross_entropy(probs.log(), targets, weight=trained.model.class_weight))
    assert metrics["test/loss"] == pytest.approx(objective, rel=1e-3)
    assert abs(objective - plain) > 1e-3  # the focal term changed it
