"""``report.md``: a short Markdown report of an evaluation (metrics tables, calibration, embedded figures)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

# (key, label) of the headline metrics, in report order
HEADLINE = [
    ("accuracy", "accuracy"),
    ("balanced_accuracy", "balanced accuracy"),
    ("precision_macro", "precision (macro)"),
    ("recall_macro", "recall (macro)"),
    ("f1_macro", "F1 (macro)"),
    ("auroc", "ROC-AUC"),
    ("pr_auc", "PR-AUC (average precision)"),
    ("nll", "NLL"),
    ("brier", "Brier score"),
    ("ece", "ECE (top label, 15 bins)"),
    ("mce", "MCE (top label, 15 bins)"),
    ("ece_positive", "ECE of P(positive class)"),
    ("mce_positive", "MCE of P(positive class)"),
    ("loss", "training loss (class-weighted CE)"),
]
OPERATING = [("threshold", "operating threshold"), ("sensitivity", "sensitivity"), ("specificity", "specificity")]
PER_CLASS = ["support", "precision", "recall", "f1", "auroc", "pr_auc"]

FIGURE_TITLES = {
    "confusion_matrix": "Confusion matrix (counts)",
    "confusion_matrix_normalized": "Confusion matrix (row-normalised: recall on the diagonal)",
    "roc_curves": "ROC curves",
    "pr_curves": "Precision-recall curves",
    "reliability": "Reliability diagrams before and after calibration",
    "per_class_f1": "F1 per class",
}


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if float(v).is_integer() and abs(v) > 1:
        return f"{int(v)}"
    return f"{v:.4f}"


def metrics_table(metrics: dict[str, float], prefix: str = "test/") -> list[str]:
    """Headline metrics, uncalibrated and (when present) calibrated side by side."""
    calibrated = any(k.endswith("_calibrated") for k in metrics)
    head = "| metric | uncalibrated | calibrated |" if calibrated else "| metric | value |"
    lines = [head, "|---|---:|---:|" if calibrated else "|---|---:|"]
    for key, label in HEADLINE:
        raw = metrics.get(prefix + key)
        cal = metrics.get(prefix + key + "_calibrated")
        if raw is None and cal is None:
            continue
        lines.append(f"| {label} | {fmt(raw)} | {fmt(cal)} |" if calibrated else f"| {label} | {fmt(raw)} |")
    op = [(label, metrics[prefix + k]) for k, label in OPERATING if prefix + k in metrics]
    if op:
        lines += ["", "Binary decision at the operating threshold (on calibrated probabilities, positive class = "
                      "the second class):", "", "| | value |", "|---|---:|"]
        lines += [f"| {label} | {fmt(v)} |" for label, v in op]
    return lines


def per_class_table(metrics: dict[str, float], class_names: Sequence[str], prefix: str = "test/") -> list[str]:
    suffix = "_calibrated" if any(k.endswith("_calibrated") for k in metrics) else ""
    lines = ["| class | " + " | ".join(PER_CLASS) + " |", "|---|" + "---:|" * len(PER_CLASS)]
    for c in class_names:
        vals = []
        for m in PER_CLASS:
            key = f"{prefix}per_class/{c}/{m}"
            vals.append(fmt(metrics.get(key + suffix, metrics.get(key))))
        lines.append(f"| {c} | " + " | ".join(vals) + " |")
    return lines


def figure_lines(figures: dict[str, Path], folder: Path) -> list[str]:
    lines = []
    for name, path in figures.items():
        title = FIGURE_TITLES.get(name, name.replace("_", " "))
        rel = Path(path).resolve().relative_to(folder.resolve()).as_posix()
        lines += [f"### {title}", "", f"![{title}]({rel})", ""]
    return lines


def write_report(path: Path, title: str, facts: Sequence[tuple[str, str]], metrics: dict[str, float],
                 class_names: Sequence[str], figures: dict[str, Path], prefix: str = "test/") -> Path:
    """Write ``report.md``: facts (checkpoint, data, calibration...), metrics, per-class table, figures."""
    path = Path(path)
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts]
    lines += ["", "## Metrics", "", *metrics_table(metrics, prefix), ""]
    lines += ["ECE/MCE: 15 equal-width bins of the top-label confidence (Guo et al. 2017); binary tasks also report "
              "them for P(positive class). All values come from `metrics.json`.", ""]
    cal = " (calibrated)" if any(k.endswith("_calibrated") for k in metrics) else ""
    lines += [f"## Per class{cal}", "", *per_class_table(metrics, class_names, prefix), ""]
    if figures:
        lines += ["## Figures", "", *figure_lines(figures, path.parent)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
