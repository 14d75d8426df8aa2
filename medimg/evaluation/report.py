"""``report.md``: a short Markdown report of an evaluation (metrics tables with their bootstrap intervals,
calibration, subgroup audit, embedded figures)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

from medimg.files import write_text

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
    ("loss", "the training objective on this split (its class weights, label smoothing and focal gamma)"),
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
    "conformal_coverage": "Conformal sets refitted at each alpha: coverage (and the worst class's) against the "
                          "target, and the mean set size",
    "risk_coverage": "Risk-coverage: the error rate of the images kept, the most confident first (dashed: a perfect "
                     "ranking; red: the referral rule)",
    "subgroups": "Metrics per subgroup (95% intervals; dashed: the whole split; red: clearly worse)",
    "error_gallery_mistakes": "Error gallery: most confident mistakes per class, with Grad-CAM of the predicted class",
    "error_gallery_unsure_correct": "Error gallery: least confident correct predictions per class, with Grad-CAM",
    "learning_curves": "Learning curves (all phases; dashed lines: phase starts)",
}


def fmt(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if float(v).is_integer() and abs(v) > 1:
        return f"{int(v)}"
    return f"{v:.4f}"


DEBIASED = "_debiased"  # medimg.evaluation.bootstrap: <key>_debiased, a bias-corrected value (ECE) and its interval


def _bracketed(metrics: dict[str, float], key: str) -> str:
    v, lo, hi = metrics.get(key), metrics.get(key + "_ci_low"), metrics.get(key + "_ci_high")
    if any(x is None or math.isnan(x) for x in (v, lo, hi)):
        return fmt(v)
    return f"{fmt(v)} [{fmt(lo)}, {fmt(hi)}]"


def with_interval(metrics: dict[str, float], key: str) -> str:
    """``value [low, high]`` when ``metrics`` holds the bootstrap interval of ``key``, else the value; then
    ``(bias-corrected: value [low, high])`` when it holds ``key``'s bias-corrected value (ECE)."""
    cell = _bracketed(metrics, key)
    if key + DEBIASED in metrics:
        cell += f" (bias-corrected: {_bracketed(metrics, key + DEBIASED)})"
    return cell


def metrics_table(metrics: dict[str, float], prefix: str = "test/") -> list[str]:
    """Headline metrics, uncalibrated and (when present) calibrated side by side, with bootstrap intervals."""
    calibrated = any(k.endswith("_calibrated") for k in metrics)
    head = "| metric | uncalibrated | calibrated |" if calibrated else "| metric | value |"
    lines = [head, "|---|---:|---:|" if calibrated else "|---|---:|"]
    for key, label in HEADLINE:
        raw, cal = prefix + key, prefix + key + "_calibrated"
        if raw not in metrics and cal not in metrics:
            continue
        cells = [with_interval(metrics, raw)] + ([with_interval(metrics, cal)] if calibrated else [])
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    op = [(label, prefix + k) for k, label in OPERATING if prefix + k in metrics]
    if op:
        lines += ["", "Binary decision at the operating threshold (on calibrated probabilities, positive class = "
                      "the second class):", "", "| | value |", "|---|---:|"]
        lines += [f"| {label} | {with_interval(metrics, key)} |" for label, key in op]
    return lines


def conformal_lines(metrics: Mapping[str, float], class_names: Sequence[str], described: str | None,
                    prefix: str = "test/", curve: Mapping[str, Sequence[float]] | None = None,
                    warnings: Sequence[str] = ()) -> list[str]:
    """The conformal prediction sets: the rule, coverage against its target and mean set size (with intervals),
    per class coverage, and with ``curve`` (``figures.conformal_curve_of``) both at other alphas; nothing
    without sets."""
    if described is None or f"{prefix}conformal_coverage" not in metrics:
        return []

    def value(key: str) -> str:
        lo, hi = metrics.get(f"{key}_ci_low"), metrics.get(f"{key}_ci_high")
        return f"{metrics[key]:.4f}" + (f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else "")

    lines = ["## Prediction sets", "", f"Rule: {described}. Each set holds the classes the model cannot rule out; "
             "coverage is the share of test images whose true class is in their set.", "",
             "| | value [interval] |", "|---|---|",
             f"| coverage | {value(prefix + 'conformal_coverage')} |", f"| mean set size | {value(prefix + 'conformal_set_size')} |",
             *[f"| coverage of {c} | {value(f'{prefix}per_class/{c}/conformal_coverage')} |" for c in class_names
               if f"{prefix}per_class/{c}/conformal_coverage" in metrics], ""]
    lines += [f"- **warning**: {w}" for w in warnings] + ([""] if warnings else [])
    if curve:
        lines += ["The same rule with its threshold refitted from its calibration scores at other alphas "
                  "(the coverage figure below):", "", "| target coverage | coverage | worst class | mean set size |",
                  "|---:|---:|---:|---:|",
                  *[f"| {t:.2f} | {c:.4f} | {w:.4f} | {z:.3f} |" for t, c, w, z in
                    zip(curve["target"], curve["coverage"], curve["worst_class_coverage"], curve["set_size"])], ""]
    return lines


def target_verdict(value: float, low: float | None, high: float | None, target: float) -> str:
    """Whether an accuracy with its interval meets ``target``, in words."""
    if value >= target:
        return f"meets the target {target:g}"
    if high is not None and high >= target:
        return f"is below the target {target:g}, which its interval still holds"
    return f"falls short of the target {target:g}: its whole interval lies below it"


def selective_lines(metrics: Mapping[str, float], described: str | None, prefix: str = "test/") -> list[str]:
    """Selective prediction: AURC and E-AURC, and with a referral rule the rule, the share referred and the
    accuracy of the rest against the target (with intervals); nothing without AURC."""
    if f"{prefix}selective_aurc" not in metrics:
        return []
    rows = [("AURC (lower is better)", "selective_aurc"), ("E-AURC (AURC less a perfect ranking's)", "selective_e_aurc"),
            ("share of images referred", "referred_share"), ("accuracy of the images not referred", "accuracy_not_referred")]
    lines = ["## Selective prediction", "", "Confidence: the calibrated probability of the decided class. Keeping "
             "the most confident images first, the risk-coverage curve gives the error rate of those kept against "
             "their share; AURC is its area, E-AURC the part of it due to the ranking (0: every mistake ranked below "
             "every correct call).", "",
             f"Referral: {described}." if described else "Referral: none (the model holds no referral rule: "
             "evaluation.selective.target null, or out of reach on the validation split; see the training log).", "",
             "| | value [interval] |", "|---|---|",
             *[f"| {label} | {_bracketed(dict(metrics), prefix + key)} |" for label, key in rows if prefix + key in metrics],
             ""]
    accuracy, target = metrics.get(f"{prefix}accuracy_not_referred"), metrics.get(f"{prefix}referral_target")
    if target is not None and accuracy is None:
        lines += [f"Every {prefix.rstrip('/')} image was referred.", ""]
    elif target is not None:
        low, high = metrics.get(f"{prefix}accuracy_not_referred_ci_low"), metrics.get(f"{prefix}accuracy_not_referred_ci_high")
        lines += [f"The accuracy of the images not referred, {_bracketed(dict(metrics), prefix + 'accuracy_not_referred')}, "
                  f"{target_verdict(accuracy, low, high, target)}.", ""]
    return lines


def subgroup_lines(audit, notes: Sequence[str] = ()) -> list[str]:
    """The subgroup audit as a Markdown table (value [interval] per metric), its warnings and any notes."""
    lines = ["## Subgroups", ""]
    lines += [f"- {n}" for n in notes]
    if audit is None:
        return lines + [""] if notes else []
    metrics = audit.metrics
    lines += ["| column | subgroup | images | " + " | ".join(metrics) + " | clearly worse in |",
              "|---|---|---:|" + "---:|" * len(metrics) + "---|",
              "| all | all | – | " + " | ".join(fmt(audit.overall.get(m)) for m in metrics) + " | |"]
    for row in audit.table.to_dict("records"):
        cells = [with_interval(row, m) for m in metrics]
        lines.append(f"| {row['column']} | {row['value']} | {row['images']} | " + " | ".join(cells) +
                     f" | {row['flagged']} |")
    lines += ["", "Each subgroup is scored on its own images (calibrated probabilities and decisions). "
                  "Clearly worse: at least the minimum number of images and an interval wholly below the "
                  "value of the whole split (above it for ECE/NLL/Brier). The table is in `subgroups.csv`.", ""]
    lines += [f"- **warning**: {w}" for w in audit.warnings]
    return lines + ([""] if audit.warnings else [])


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
                 class_names: Sequence[str], figures: dict[str, Path], prefix: str = "test/",
                 sections: Sequence[str] = ()) -> Path:
    """Write ``report.md``: facts (checkpoint, data, calibration...), metrics, per-class table, the extra
    Markdown ``sections`` (subgroups), figures."""
    path = Path(path)
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: {v}" for k, v in facts]
    lines += ["", "## Metrics", "", *metrics_table(metrics, prefix), ""]
    lines += ["ECE/MCE: 15 equal-width bins of the top-label confidence (Guo et al. 2017); binary tasks also report "
              "them for P(positive class). All values come from `metrics.json`.", ""]
    if any(k.endswith("_ci_low") for k in metrics):
        lines += ["Brackets: class-stratified bootstrap intervals at `evaluation.interval_level`, BCa (bias-corrected "
                  "and accelerated, the acceleration from a grouped jackknife; `metrics.json`: `<metric>_ci_low`, "
                  "`_ci_high`). The binned ECE is biased upwards and the ECE of a resample more so: its percentile "
                  "interval can lie wholly above it, and one that corrects for the bias wholly below it. ECE is "
                  "therefore given bias-corrected (2 ECE - the median resampled ECE) with the basic bootstrap "
                  "interval (`<key>_debiased`, `_debiased_ci_low`, `_debiased_ci_high`), as is any metric whose BCa "
                  "interval misses its value. Every interval contains the value before it.", ""]
    cal = " (calibrated)" if any(k.endswith("_calibrated") for k in metrics) else ""
    lines += [f"## Per class{cal}", "", *per_class_table(metrics, class_names, prefix), ""]
    lines += list(sections)
    if figures:
        lines += ["## Figures", "", *figure_lines(figures, path.parent)]
    return write_text(path, "\n".join(lines).rstrip() + "\n")
