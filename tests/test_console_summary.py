"""The end of a run on one screen: the headline figures with their intervals, calibration before -> after,
the run folder, the report and TensorBoard's command, at most 20 lines; the server's /metadata gives the same
figures in plain words, and its page keeps the technical detail in a collapsed <details> element."""

from __future__ import annotations

import json
import re

import pytest
import torch
from fastapi.testclient import TestClient

from medimg.console import headline_figures, summary_lines
from medimg.serving.app import create_app
from tests.test_serve_app import settings

RUN = "outputs/synthetic/2026-12-04/10-00-00-abc123"
VALUES = {"accuracy": (0.921, 0.90, 0.94), "balanced_accuracy": (0.947, 0.92, 0.96), "f1_macro": (0.9, 0.88, 0.92),
          "auroc": (0.990, 0.985, 0.994), "pr_auc": (0.955, 0.94, 0.97), "nll": (0.232, 0.21, 0.256),
          "brier": (0.12, 0.1, 0.14)}
CALIBRATED = {"accuracy": (0.937, 0.921, 0.950), "balanced_accuracy": (0.906, 0.871, 0.936),
              "f1_macro": (0.91, 0.89, 0.93), "auroc": (0.991, 0.985, 0.995), "pr_auc": (0.962, 0.945, 0.975),
              "nll": (0.172, 0.150, 0.195), "brier": (0.1, 0.09, 0.11)}


def with_interval(out: dict, key: str, value: float, low: float, high: float) -> None:
    out[key], out[f"{key}_ci_low"], out[f"{key}_ci_high"] = value, low, high


def train_metrics(classes=("nevus", "melanoma", "vascular"), binary: bool = False) -> dict[str, float]:
    """A metrics.json as a calibrated training run writes it (per-class entries included)."""
    m: dict[str, float] = {"test/ece": 0.031, "test/ece_calibrated": 0.026, "test/mce": 0.2, "test/loss": 0.4,
                           "test/mce_calibrated": 0.15, "test/loss_calibrated": 0.41, "val/auroc_best": 0.951}
    for name, (v, lo, hi) in VALUES.items():
        with_interval(m, f"test/{name}", v, lo, hi)
    for name, (v, lo, hi) in CALIBRATED.items():
        with_interval(m, f"test/{name}_calibrated", v, lo, hi)
    with_interval(m, "test/ece_debiased", 0.024, 0.012, 0.036)
    with_interval(m, "test/ece_calibrated_debiased", 0.019, 0.008, 0.029)
    for c in classes:
        for metric in ("precision", "recall", "f1", "auroc", "pr_auc"):
            m[f"test/per_class/{c}/{metric}"] = m[f"test/per_class/{c}/{metric}_calibrated"] = 0.9
        m[f"test/per_class/{c}/support"] = 200
    if binary:
        with_interval(m, "test/sensitivity", 0.912, 0.88, 0.94)
        with_interval(m, "test/specificity", 0.95, 0.93, 0.97)
        m["test/threshold"] = 0.43
    return m


def test_a_training_run_fits_a_screen_with_intervals_and_paths():
    lines = summary_lines(train_metrics(), "synthetic, resnet18: test split", RUN, calibration="bcts")
    text = "\n".join(lines)
    assert len(lines) <= 20
    assert lines[0] == "synthetic, resnet18: test split (600 images)"
    for label, value in [("accuracy", "0.937 [0.921, 0.950]"), ("balanced accuracy", "0.906 [0.871, 0.936]"),
                         ("AUROC", "0.991 [0.985, 0.995]"), ("PR-AUC", "0.962 [0.945, 0.975]")]:
        assert re.search(rf"^  {re.escape(label)} +{re.escape(value)}$", text, re.M), label
    assert re.search(r"^  calibration +bcts: before -> after$", text, re.M)
    assert re.search(r"^  ECE +0\.031 -> 0\.026 \(bias-corrected 0\.019 \[0\.008, 0\.029\]\)$", text, re.M)
    assert re.search(r"^  NLL +0\.232 \[0\.210, 0\.256\] -> 0\.172 \[0\.150, 0\.195\]$", text, re.M)
    assert "val/auroc 0.951" in text and "95% bootstrap intervals" in text
    assert lines[-3:] == [f"run folder:  {RUN}", f"report:      {RUN}/report.md",
                          f"TensorBoard: tensorboard --logdir {RUN}"]
    assert "per_class" not in text and "f1" not in text and "brier" not in text.lower()  # the full table: files


def test_binary_runs_give_the_operating_point():
    lines = summary_lines(train_metrics(("NORMAL", "PNEUMONIA"), binary=True), "t", RUN, positive="PNEUMONIA",
                          tensorboard=False, level=0.9)
    text = "\n".join(lines)
    assert len(lines) <= 20 and "tensorboard" not in text.lower() and "90% bootstrap intervals" in text
    assert re.search(r"^  sensitivity +0\.912 \[0\.880, 0\.940\]$", text, re.M)
    assert re.search(r"^  specificity +0\.950 \[0\.930, 0\.970\]$", text, re.M)
    assert "P(PNEUMONIA) >= 0.430" in text


def test_an_uncalibrated_run_and_a_cross_validation():
    plain = {k: v for k, v in train_metrics().items() if "_calibrated" not in k}
    text = "\n".join(summary_lines(plain, "t", RUN))
    assert re.search(r"^  accuracy +0\.921 \[0\.900, 0\.940\]$", text, re.M)
    assert re.search(r"^  calibration +none \(plain softmax\)$", text, re.M)
    assert re.search(r"^  ECE +0\.031 \(bias-corrected 0\.024 \[0\.012, 0\.036\]\)$", text, re.M)
    ensemble = {k: v for k, v in train_metrics().items() if "_ci_" not in k}
    mean = {"test/accuracy_calibrated": 0.931, "test/auroc_calibrated": 0.98}
    std = {"test/accuracy_calibrated": 0.008, "test/auroc_calibrated": 0.004}
    lines = summary_lines(ensemble, "cv", RUN, folder_label="results in", metrics_file="cv_metrics.json",
                          folds=(mean, std))
    text = "\n".join(lines)
    assert re.search(r"^  accuracy +0\.937   folds 0\.931 ± 0\.008$", text, re.M)
    assert "bootstrap" not in text and "cv_metrics.json" in text and f"results in:  {RUN}" in text


def test_validation_only_runs_name_the_selection_score():
    lines = summary_lines({"val/auroc_best": 0.9}, "t: no test split", RUN, report=False)
    assert lines == ["t: no test split", "  chosen by          val/auroc 0.900 (best validation)",
                     f"run folder:  {RUN}", f"TensorBoard: tensorboard --logdir {RUN}"]


@pytest.mark.slow
def test_train_prints_the_summary_not_the_table(tiny_cfg, capsys):
    from medimg.train import train

    cfg = tiny_cfg("stage=full", "logger=tensorboard")
    metrics = train(cfg)
    out = capsys.readouterr().out.splitlines()
    start = next(i for i, line in enumerate(out) if line.startswith("synthetic, resnet18: test split"))
    summary = out[start:]
    run = cfg.paths.output_dir
    assert len(summary) <= 20 and summary[-1] == f"TensorBoard: tensorboard --logdir {run}"
    assert f"run folder:  {run}" in summary and f"report:      {run}/report.md" in summary
    figure = headline_figures(metrics)[0]
    assert figure.key == "test/accuracy_calibrated" and figure.low is not None
    assert f"  accuracy           {figure.value:.3f} [{figure.low:.3f}, {figure.high:.3f}]" in summary
    assert not any("test/" in line and "per_class" in line for line in out)  # the old table is gone
    assert not any(line.strip().startswith(("test/f1_macro", "test/brier", "┃")) for line in out)


@pytest.fixture(scope="module")
def crafted_run(tiny_ckpt, tmp_path_factory):
    """A run folder with the tiny checkpoint and a metrics.json of known values."""
    run = tmp_path_factory.mktemp("summary_run")
    (run / "checkpoints").mkdir()
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    names = ckpt["medimg"]["class_names"]
    torch.save(ckpt, run / "checkpoints" / "best.ckpt")
    ckpt["medimg"]["calibration"] = None
    torch.save(ckpt, run / "checkpoints" / "plain.ckpt")
    (run / "metrics.json").write_text(json.dumps(train_metrics(names)))
    return run


def metadata_and_page(tmp_path, ckpt) -> tuple[dict, str]:
    with TestClient(create_app(settings(tmp_path, f"ckpt_path={ckpt}", "inference.batching=false"))) as client:
        return client.get("/metadata").json(), client.get("/").text


def test_metadata_speaks_in_plain_words(crafted_run, tmp_path):
    meta, page = metadata_and_page(tmp_path, crafted_run / "checkpoints" / "best.ckpt")
    texts = [f["text"] for f in meta["headline"]]
    assert meta["calibrated"] is True and meta["test_images"] == 4 * 200
    assert texts[0] == "Accuracy (images classified correctly): 93.7% (95% interval 92.1-95.0%)"
    assert texts[2].startswith("Area under the ROC curve") and texts[2].endswith(": 0.991 (95% interval 0.985-0.995)")
    assert texts[-1].startswith("Calibration: a stated probability was off by 2.6 percentage points on average")
    accuracy = meta["headline"][0]
    assert (accuracy["metric"], accuracy["low"], accuracy["high"]) == ("test/accuracy_calibrated", 0.921, 0.95)
    assert not any(word in " ".join(texts) for word in ("bcts", "T =", "bias", "NLL"))  # no calibrator internals
    technical = re.search(r"<details id=\"technical\"([^>]*)>(.*?)</details>", page, re.S)
    assert technical and "open" not in technical.group(1)  # collapsed: one click away
    assert 'id="metrics"' in technical.group(2) and 'id="technical-list"' in technical.group(2)
    assert 'id="headline-list"' in page and 'id="headline-list"' not in technical.group(2)


def test_a_model_served_uncalibrated_gets_its_runs_uncalibrated_figures(crafted_run, tmp_path):
    meta, _ = metadata_and_page(tmp_path, crafted_run / "checkpoints" / "plain.ckpt")
    assert meta["calibrated"] is False
    assert meta["headline"][0]["text"] == "Accuracy (images classified correctly): 92.1% (95% interval 90.0-94.0%)"
    assert meta["headline"][-1]["text"].startswith("Calibration: none (plain softmax outputs)")

