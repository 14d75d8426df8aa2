"""A binary task through the evaluation pipeline without Lightning: calibration with an operating threshold,
metrics, predictions table, figures and report."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import torch

from medimg.evaluation.calibration import Calibration, fit_settings
from medimg.evaluation.evaluator import evaluation_from_outputs, write_evaluation
from medimg.evaluation.predictions import SplitOutputs
from tests.conftest import calibration_of

CLASSES = ["NORMAL", "PNEUMONIA"]


def fitted(outputs, cal):
    return fit_settings(cal, outputs.logits[0], outputs.targets)


def _outputs(n: int, seed: int, views: int = 1) -> SplitOutputs:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    margin = (y.float() * 2 - 1) * 1.2 + torch.randn(n, generator=g) * 1.5 + 0.8  # biased to class 1
    logits = torch.stack([-margin, margin], 1) * 3  # over-confident
    logits = torch.stack([logits + 0.1 * k * torch.randn(n, 2, generator=g) for k in range(views)])
    return SplitOutputs(logits=logits, targets=y, rows=torch.arange(n))


@pytest.mark.parametrize("method", ["temperature", "platt", "isotonic", "none"])
def test_binary_calibration_and_threshold(method, tmp_path):
    val, test = _outputs(400, 0), _outputs(300, 1)
    state = fitted(val, calibration_of(method, threshold="youden"))
    assert 0 < state.threshold < 1 and state.threshold_rule == "youden"
    table = pd.DataFrame({"path": [f"img_{i}.png" for i in range(300)], "label": "x"})
    ev = evaluation_from_outputs(test, table, CLASSES, state)
    m = ev.metrics
    assert {"test/sensitivity", "test/specificity", "test/threshold", "test/ece_positive"} <= set(m)
    assert m["test/threshold"] == state.threshold
    if method != "none":
        assert m["test/nll_calibrated"] < m["test/nll"]
        assert m["test/ece_calibrated"] < m["test/ece"]
    else:
        assert not any(k.endswith("_calibrated") for k in m)

    paths = write_evaluation(ev, tmp_path, title="binary", facts=[("data set", "synthetic binary")])
    pred = pd.read_csv(paths["predictions"])
    p1 = state.probs(test.logits[0].double())[:, 1].numpy()
    assert (pred["prediction"] == ["PNEUMONIA" if v >= state.threshold else "NORMAL" for v in p1]).all()
    assert json.loads(paths["metrics"].read_text()) == pytest.approx(m)
    report = paths["report"].read_text()
    assert "operating threshold" in report and "| sensitivity |" in report
    assert (tmp_path / "figures" / "reliability.png").stat().st_size > 5000


def test_target_sensitivity_rule_reaches_target_on_validation():
    val = _outputs(500, 2)
    state = fitted(val, calibration_of("temperature", threshold="target_sensitivity",
                                                         target_sensitivity=0.95))
    p1 = state.probs(val.logits[0].double())[:, 1]
    sens = float(((p1 >= state.threshold) & (val.targets == 1)).sum() / (val.targets == 1).sum())
    assert sens >= 0.95 and state.threshold_rule == "sensitivity >= 0.95"


def test_tta_views_are_averaged_as_probabilities():
    out = _outputs(50, 3, views=3)
    state = Calibration.from_dict({"method": "temperature", "temperature": 2.0})
    expected = torch.stack([torch.softmax(z.double() / 2.0, -1) for z in out.logits]).mean(0)
    torch.testing.assert_close(out.probs(state), expected)
    torch.testing.assert_close(out.mean_logits().double().softmax(-1), out.probs(None), atol=1e-6, rtol=0)


def test_platt_on_a_multiclass_task_falls_back_to_temperature(caplog):
    g = torch.Generator().manual_seed(4)
    out = SplitOutputs(logits=torch.randn(1, 100, 3, generator=g) * 3, targets=torch.randint(0, 3, (100,), generator=g),
                       rows=torch.arange(100))
    state = fitted(out, calibration_of("platt"))
    assert state.method == "temperature" and state.threshold is None
    assert "binary tasks" in caplog.text


def test_auto_and_bcts_through_the_pipeline_with_intervals_subgroups_and_curves(tmp_path):
    from medimg.config.evaluation import EvaluationSettings
    from medimg.config.schema import read
    from medimg.evaluation.analyses import analyse, evaluation_options
    from medimg.files import write_json

    val, test = _outputs(400, 0), _outputs(300, 1)
    selection = {"candidates": ["temperature", "platt", "bcts", "vector"], "folds": 4, "seed": 0}
    state = fitted(val, calibration_of("auto", threshold="youden", selection=selection))
    assert state.method in selection["candidates"] and set(state.selection["cv_nll"]) == set(selection["candidates"])
    assert 0 < state.threshold < 1
    table = pd.DataFrame({"path": [f"img_{i}.png" for i in range(300)], "label": "x",
                          "scanner": ["A", "B", "C"] * 100})
    ev = evaluation_from_outputs(test, table, CLASSES, state)
    block = {"bootstrap_resamples": 200, "interval_level": 0.95, "bootstrap_seed": 0,
             "subgroup_metrics": ["accuracy", "sensitivity"], "subgroup_min_images": 50,
             "gallery_per_class": 2, "gallery_method": "gradcam", "gallery_layer": None, "figures": True,
             "conformal": {"alpha": 0.1, "score": "aps", "mondrian": False}, "selective": {"target": 0.9, "level": 0.95}}
    options = evaluation_options(read(EvaluationSettings, block, "evaluation"), ["scanner"], None)
    before = dict(ev.metrics)
    analysed = analyse(ev, options)
    assert dict(ev.metrics) == before and ev.subgroups is None  # the evaluation analysed is left as it was
    with pytest.raises(TypeError):
        analysed.metrics["test/accuracy"] = 1.0  # no writer changes another's metrics
    ev = analysed
    m = ev.metrics
    for key in ("test/auroc", "test/auroc_calibrated", "test/sensitivity", "test/specificity"):
        assert m[f"{key}_ci_low"] <= m[key] <= m[f"{key}_ci_high"], key
    assert list(ev.subgroups.table["value"]) == ["A", "B", "C"]
    write_json(tmp_path / "history.json", {"monitor": "val/auroc", "epochs": [
        {"phase": "head", "epoch": 0, "train/loss": 0.9, "val/loss": 0.8, "val/auroc": 0.7},
        {"phase": "finetune", "epoch": 0, "train/loss": 0.5, "val/loss": 0.6, "val/auroc": 0.8}]})
    paths = write_evaluation(ev, tmp_path, title="binary")
    assert json.loads(paths["metrics"].read_text()) == pytest.approx(m)
    report = paths["report"].read_text()
    lo, hi = m["test/sensitivity_ci_low"], m["test/sensitivity_ci_high"]
    assert f"| sensitivity | {m['test/sensitivity']:.4f} [{lo:.4f}, {hi:.4f}] |" in report
    assert "the training objective on this split" not in report  # no test/loss here
    assert "(figures/learning_curves.png)" in report and "## Subgroups" in report and "| scanner | B |" in report
    assert (tmp_path / "figures" / "learning_curves.png").stat().st_size > 5000
    assert pd.read_csv(paths["subgroups_table"])["images"].tolist() == [100, 100, 100]
