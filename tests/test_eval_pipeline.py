"""End of a training run and ``medimg.evaluate``: calibration (and the conformal and referral rules) stored in
best.ckpt, metrics.json, predictions.csv, figures, report.md, TensorBoard, test-time augmentation, and the errors
for bad checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import TINY, compose_train
from sklearn.metrics import accuracy_score, log_loss, roc_auc_score

from medimg.inference import CheckpointError, ClassMismatchError, load_trained

pytestmark = pytest.mark.slow

FIGURES = {"confusion_matrix", "confusion_matrix_normalized", "roc_curves", "pr_curves", "reliability", "per_class_f1",
           "error_gallery_mistakes", "error_gallery_unsure_correct", "risk_coverage", "conformal_coverage"}
RUN_FIGURES = FIGURES | {"learning_curves"}  # a training run also draws its history
REQUIRED = ["test/accuracy", "test/balanced_accuracy", "test/precision_macro", "test/recall_macro", "test/f1_macro",
            "test/auroc", "test/pr_auc", "test/nll", "test/brier", "test/ece", "test/mce", "test/loss",
            "test/nll_calibrated", "test/ece_calibrated", "test/brier_calibrated"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny training run (tensorboard + csv loggers) shared by the tests of this module; its referral target
    is one the tiny validation split can back."""
    from medimg.train import train

    root = tmp_path_factory.mktemp("evalrun")
    data = tmp_path_factory.mktemp("evaldata")
    run = root / "run"
    metrics = train(compose_train(run, data, [*TINY, "logger=many", "stage=full", "calibration=temperature",
                                              "evaluation.selective.target=0.25", "evaluation.selective.level=0.5",
                                              "evaluation.figures=true"]))
    return {"run": run, "data": data, "metrics": metrics, "root": root}


def _evaluate(trained, out, *overrides, dataset="synthetic"):
    from hydra import compose, initialize_config_dir

    from medimg.cli import CONF_DIR
    from medimg.evaluate import evaluate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"paths.root_dir={trained['root']}", f"paths.output_dir={out}", f"paths.data_dir={trained['data']}",
            f"dataset={dataset}", "dataset.num_images=160", "dataset.img_size=32", "dataset.num_workers=0",
            "trainer.enable_progress_bar=false", "logger=csv", f"output_dir={out}", *overrides])
    return evaluate(cfg)


def test_run_writes_metrics_predictions_figures_report(trained):
    run, metrics = trained["run"], trained["metrics"]
    saved = json.loads((run / "metrics.json").read_text())
    assert saved == pytest.approx(metrics)
    for key in REQUIRED:
        assert key in saved, key
    classes = ["nevus", "melanoma", "keratosis", "vascular"]
    for c in classes:
        for m in ("precision", "recall", "f1", "support"):
            assert f"test/per_class/{c}/{m}" in saved
    assert {p.stem for p in (run / "figures").glob("*.png")} == RUN_FIGURES
    assert all(p.stat().st_size > 5000 for p in (run / "figures").glob("*.png"))
    report = (run / "report.md").read_text()
    assert "| ECE (top label, 15 bins) |" in report and "temperature, T = " in report
    for name in RUN_FIGURES:
        assert f"(figures/{name}.png)" in report

    pred = pd.read_csv(run / "predictions.csv")
    expected_cols = ["path", "label", "prediction", "probability", "prediction_set", "refer",
                     *[f"p_{c}" for c in classes],
                     *[f"p_uncalibrated_{c}" for c in classes]]
    assert list(pred.columns) == expected_cols
    # the conformal sets (evaluation.conformal, fitted on validation): coverage and size as the file says
    held = [label in str(s).split("|") for label, s in zip(pred["label"], pred["prediction_set"])]
    assert saved["test/conformal_coverage"] == pytest.approx(sum(held) / len(held), abs=1e-9)
    sizes = [len(str(s).split("|")) if isinstance(s, str) and s else 0 for s in pred["prediction_set"]]
    assert saved["test/conformal_set_size"] == pytest.approx(sum(sizes) / len(sizes), abs=1e-9)
    assert saved["test/conformal_coverage_ci_low"] <= saved["test/conformal_coverage"] <= saved["test/conformal_coverage_ci_high"]
    stored = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["medimg"]["conformal"]
    assert stored["score"] == "lac" and stored["alpha"] == 0.1 and "prediction sets" in report
    _check_referrals(run, saved, pred)
    assert pred["path"].is_unique and len(pred) == sum(saved[f"test/per_class/{c}/support"] for c in classes)
    # the files agree with each other: metrics recomputed from predictions.csv (8 significant digits) with scikit-learn
    y = pred["label"].map(classes.index).to_numpy()
    raw = pred[[f"p_uncalibrated_{c}" for c in classes]].to_numpy()
    cal = pred[[f"p_{c}" for c in classes]].to_numpy()
    assert saved["test/accuracy"] == pytest.approx(accuracy_score(y, raw.argmax(1)), abs=1e-6)
    assert saved["test/nll"] == pytest.approx(log_loss(y, raw, labels=range(4)), abs=1e-6)
    assert saved["test/nll_calibrated"] == pytest.approx(log_loss(y, cal, labels=range(4)), abs=1e-6)
    assert saved["test/auroc_calibrated"] == pytest.approx(roc_auc_score(y, cal, multi_class="ovr"), abs=1e-6)
    assert (pred["prediction"] == [classes[k] for k in cal.argmax(1)]).all()
    np.testing.assert_allclose(pred["probability"], cal.max(1), atol=1e-6)


def _check_referrals(run, saved, pred):
    """The referral (evaluation.selective, fitted on validation): refer is a probability below the stored
    threshold, and metrics.json's share referred, accuracy of the rest and AURC are those of predictions.csv."""
    from medimg.evaluation.selective import aurc

    rule = torch.load(run / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)["medimg"]["referral"]
    assert rule["target"] == 0.25 and rule["level"] == 0.5 and saved["test/referral_threshold"] == rule["threshold"]
    assert pred["refer"].tolist() == (pred["probability"] < rule["threshold"]).tolist()
    kept = pred[~pred["refer"]]
    assert saved["test/referred_share"] == pytest.approx(pred["refer"].mean(), abs=1e-9)
    assert saved["test/accuracy_not_referred"] == pytest.approx((kept["label"] == kept["prediction"]).mean(), abs=1e-9)
    wrong = (pred["label"] != pred["prediction"]).to_numpy()
    assert saved["test/selective_aurc"] == pytest.approx(aurc(pred["probability"].to_numpy(), wrong)[0], abs=1e-6)
    for key in ("selective_aurc", "referred_share", "accuracy_not_referred"):
        assert saved[f"test/{key}_ci_low"] <= saved[f"test/{key}"] <= saved[f"test/{key}_ci_high"], key
    report = (run / "report.md").read_text()
    assert "## Selective prediction" in report and "| accuracy of the images not referred |" in report


def test_best_checkpoint_carries_the_calibration(trained):
    ckpt = trained["run"] / "checkpoints" / "best.ckpt"
    raw = torch.load(ckpt, map_location="cpu", weights_only=True)
    state = raw["medimg"]["calibration"]
    assert state["method"] == "temperature" and isinstance(state["temperature"], float) and state["temperature"] > 0
    assert state["val_nll_after"] <= state["val_nll_before"]
    assert load_trained(ckpt).calibration.to_dict() == state


def test_tensorboard_gets_metrics_and_figures(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = list((trained["run"] / "tensorboard" / "test").glob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"images": 0, "scalars": 0, "tensors": 0}).Reload()
    assert {f"test/{n}" for n in FIGURES} <= set(acc.Tags()["images"])
    scalars = set(acc.Tags()["scalars"])  # the headline metrics, shown in the hparams view; not 100 charts
    assert "test/ece_calibrated" in scalars and "test/auroc" in scalars and len(scalars) <= 22, sorted(scalars)
    assert not any("per_class" in t or t.endswith("_ci_low") for t in scalars)
    text = acc.Tensors("test/metrics/text_summary")[0].tensor_proto.string_val[0].decode()
    assert "| test/per_class/" in text and "_ci_low" not in text  # every metric in one table, intervals beside
    assert "_hparams_/experiment" in acc.Tags()["tensors"] or (events[0].parent / "hparams.yaml").is_file()


def test_evaluate_reproduces_the_run_metrics(trained, tmp_path):
    out = tmp_path / "again"
    metrics = _evaluate(trained, out, f"ckpt_path={trained['run'] / 'checkpoints' / 'best.ckpt'}")
    test_metrics = {k: v for k, v in trained["metrics"].items() if k.startswith("test/")}  # not val/auroc_best
    assert metrics == pytest.approx(test_metrics, abs=1e-6)
    assert (out / "report.md").is_file() and (out / "predictions.csv").is_file()
    assert {p.stem for p in (out / "figures").glob("*.png")} == FIGURES


def test_evaluation_figures_false_draws_none_and_says_so(trained, tmp_path):
    out = tmp_path / "nofig"
    metrics = _evaluate(trained, out, f"ckpt_path={trained['run'] / 'checkpoints' / 'best.ckpt'}",
                        "evaluation.figures=false")
    assert metrics["test/auroc"] == pytest.approx(trained["metrics"]["test/auroc"], abs=1e-6)
    assert not list(out.rglob("*.png")) and (out / "metrics.json").is_file()
    assert "- **figures**: none drawn (evaluation.figures=false)" in (out / "report.md").read_text()


def test_evaluate_with_tta_averages_views(trained, tmp_path):
    out = tmp_path / "tta"
    metrics = _evaluate(trained, out, f"ckpt_path={trained['run'] / 'checkpoints' / 'best.ckpt'}", "tta=true",
                        "tta_views=[hflip,vflip,rot180]")
    plain = pd.read_csv(trained["run"] / "predictions.csv")
    tta = pd.read_csv(out / "predictions.csv")
    assert (plain["path"] == tta["path"]).all()
    assert not np.allclose(plain.filter(regex="^p_").to_numpy(), tta.filter(regex="^p_").to_numpy())
    np.testing.assert_allclose(tta.filter(regex="^p_(?!uncalibrated_)").sum(1), 1.0, atol=1e-7)
    assert set(REQUIRED) <= set(metrics)
    assert "identity, hflip, vflip, rot180" in (out / "report.md").read_text()


@pytest.mark.parametrize("method", ["isotonic", "none"])
def test_evaluate_recalibrate(trained, tmp_path, method):
    """recalibrate=true: the stored rules as trained in the folder, beside them (refitted/) a calibration of
    ``method`` and the conformal and referral rules fitted on this data set's validation split, with a
    checkpoint that carries them; the same logits scored both ways."""
    out = tmp_path / method
    metrics = _evaluate(trained, out, f"ckpt_path={trained['run'] / 'checkpoints' / 'best.ckpt'}",
                        "recalibrate=true", f"calibration={method}", "evaluation.gallery_per_class=0")
    as_trained = json.loads((out / "metrics.json").read_text())
    assert as_trained["test/ece_calibrated"] == pytest.approx(trained["metrics"]["test/ece_calibrated"], abs=1e-6)
    refit = json.loads((out / "refitted" / "metrics.json").read_text())
    assert refit == pytest.approx({k.removeprefix("refitted/"): v for k, v in metrics.items()
                                   if k.startswith("refitted/")})
    assert refit["test/auroc"] == pytest.approx(as_trained["test/auroc"], abs=1e-9)  # the same logits
    cols = pd.read_csv(out / "refitted" / "predictions.csv").columns
    stored = load_trained(out / "refitted" / "checkpoints" / "best.ckpt")
    assert stored.calibration.method == method
    if method == "none":
        assert not any(k.endswith("_calibrated") for k in refit)
        assert not any(c.startswith("p_uncalibrated_") for c in cols) and "p_nevus" in cols
    else:
        assert "test/ece_calibrated" in refit and any(c.startswith("p_uncalibrated_") for c in cols)
        assert f"{method}" in (out / "refitted" / "report.md").read_text()
    report = (out / "report.md").read_text()
    assert "## As trained and refitted on this data set" in report and "refitted on its validation split" in report
    assert "## Against the training site" not in report  # the run's own data: no second site


def test_external_validation_sets_the_sites_side_by_side(trained, tmp_path):
    """Another site's images (the synthetic set as a second camera draws it): the stored rules applied as
    trained, the report and site_comparison.json with the training site's test figures, this site's, and this
    site's refitted; the console summary stays on one screen."""
    out = tmp_path / "site_b"
    metrics = _evaluate(trained, out, f"ckpt_path={trained['run'] / 'checkpoints' / 'best.ckpt'}",
                        "recalibrate=true", "evaluation.gallery_per_class=0", "evaluation.bootstrap_resamples=200",
                        dataset="synthetic_site_b")
    assert (trained["data"] / "synthetic" / "n160-px32-seed1-site0.5" / "manifest.json").is_file()
    table = json.loads((out / "site_comparison.json").read_text())
    assert table["columns"] == ["training site, test split", "synthetic_site_b, test split, as trained",
                                "synthetic_site_b, test split, refitted on its validation split"]
    rows = {r["metric"]: r for r in table["rows"]}
    run = trained["metrics"]
    assert rows["auroc"]["training site, test split"]["value"] == pytest.approx(
        run.get("test/auroc_calibrated", run["test/auroc"]))
    here = rows["conformal_coverage"]["synthetic_site_b, test split, as trained"]
    assert here["value"] == pytest.approx(metrics["test/conformal_coverage"])
    assert here["ci_low"] <= here["value"] <= here["ci_high"]
    assert "refitted/test/conformal_coverage" in metrics
    report = (out / "report.md").read_text()
    assert "## Against the training site" in report and "| prediction-set coverage |" in report
    assert (out / "refitted" / "report.md").is_file() and (out / "figures" / "conformal_coverage.png").is_file()
    curve = json.loads((out / "conformal_curve.json").read_text())
    assert 0.9 in [round(t, 9) for t in curve["target"]] and len(curve["coverage"]) == len(curve["set_size"])


def test_missing_and_corrupt_checkpoints_are_named(trained, tmp_path):
    missing = tmp_path / "nope" / "best.ckpt"
    with pytest.raises(CheckpointError, match=str(missing)):
        _evaluate(trained, tmp_path / "o1", f"ckpt_path={missing}")
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match=str(corrupt)):
        _evaluate(trained, tmp_path / "o2", f"ckpt_path={corrupt}")


def test_class_mismatch_lists_both(trained, tmp_path):
    ckpt = torch.load(trained["run"] / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    other = ["benign", "malignant", "other", "unknown"]
    ckpt["hyper_parameters"]["class_names"] = other
    ckpt["medimg"]["class_names"] = other
    path = tmp_path / "other_classes.ckpt"
    torch.save(ckpt, path)
    with pytest.raises(ClassMismatchError) as err:
        _evaluate(trained, tmp_path / "o3", f"ckpt_path={path}")
    msg = str(err.value)
    assert str(other) in msg and "['nevus', 'melanoma', 'keratosis', 'vascular']" in msg and str(path) in msg
