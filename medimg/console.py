"""The command-line entry points' console: third-party chatter kept out, and the end-of-run summary.

A run's console shows medimg's own log (data, phases, the network's blocks, metrics) and Lightning's progress
bar; Lightning's hardware boilerplate (``GPU available: False ...``), its tips, and deprecation warnings that
libraries raise about each other stay out. A run ends with ``summary_lines``: the headline figures with their
intervals, calibration before and after, and where the files are, on one screen; the full tables stay in
``metrics.json`` and ``report.md``.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

BOILERPLATE = ("Tip:", "GPU available:", "TPU available:", "HPU available:", "IPU available:",
               "Trainer already configured with model summary", "`Trainer(limit_", "`Trainer(val_check_interval",
               "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
               "LOCAL_RANK:", "You are using a CUDA device", "💡")


class _DropBoilerplate(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(b in msg for b in BOILERPLATE)


def quiet_third_party() -> None:
    """Drop Lightning's boilerplate and tips, and deprecation warnings that libraries raise about each other."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).addFilter(_DropBoilerplate())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*is not supported by the model summary.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")  # frozen blocks
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")  # one per phase



LEVEL = 0.95  # evaluation.interval_level's default
HEADLINE = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"),
            ("pr_auc", "PR-AUC"), ("sensitivity", "sensitivity"), ("specificity", "specificity"))
WIDTH = 19  # the label column of the summary


class Figure(NamedTuple):
    """A headline figure: a metric's final value (from the calibrated probabilities where the model has a
    calibration; binary tasks: at the operating threshold) with its bootstrap interval when there is one."""

    name: str  # accuracy, auroc, ...
    label: str
    key: str  # its metrics.json key
    value: float
    low: float | None = None
    high: float | None = None


def number(metrics: Mapping[str, Any], key: str) -> float | None:
    """``metrics[key]`` as a float; None when it is missing or not a finite number."""
    v = metrics.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None


def final_figure(metrics: Mapping[str, Any], prefix: str, name: str, label: str = "") -> Figure | None:
    """``name``'s final value: ``<prefix><name>_calibrated`` when present, else ``<prefix><name>``."""
    for key in (f"{prefix}{name}_calibrated", f"{prefix}{name}"):
        value = number(metrics, key)
        if value is not None:
            low, high = number(metrics, key + "_ci_low"), number(metrics, key + "_ci_high")
            bounds = (low, high) if low is not None and high is not None else (None, None)
            return Figure(name, label or name, key, value, *bounds)
    return None


def headline_figures(metrics: Mapping[str, Any], prefix: str = "test/") -> list[Figure]:
    """Accuracy, balanced accuracy, AUROC, PR-AUC (and binary sensitivity, specificity), those ``metrics`` has."""
    return [f for name, label in HEADLINE if (f := final_figure(metrics, prefix, name, label))]


def cell(value: float | None, low: float | None = None, high: float | None = None) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if low is None or high is None else f"{value:.3f} [{low:.3f}, {high:.3f}]"


def _row(label: str, text: str) -> str:
    return f"  {label:<{WIDTH}}{text}"


def split_images(metrics: Mapping[str, Any], prefix: str = "test/") -> int | None:
    """The number of images scored: the sum of the per-class supports."""
    supports = [v for k, v in metrics.items() if k.startswith(f"{prefix}per_class/") and k.endswith("/support")]
    return int(sum(supports)) if supports else None


def calibration_lines(metrics: Mapping[str, Any], prefix: str, method: str | None) -> list[str]:
    """ECE and NLL before -> after calibration (just the values when the model has no calibration)."""
    def interval(key: str) -> str:
        return cell(number(metrics, key), number(metrics, key + "_ci_low"), number(metrics, key + "_ci_high"))

    p = prefix
    if number(metrics, f"{p}ece") is None and number(metrics, f"{p}nll") is None:
        return []
    calibrated = any(number(metrics, f"{p}{m}_calibrated") is not None for m in ("ece", "nll"))
    ece, nll = [interval(f"{p}{m}") for m in ("ece", "nll")]
    debiased = f"{p}ece_calibrated_debiased" if calibrated else f"{p}ece_debiased"
    if calibrated:
        ece = f"{cell(number(metrics, f'{p}ece'))} -> {cell(number(metrics, f'{p}ece_calibrated'))}"
        nll += f" -> {interval(f'{p}nll_calibrated')}"
    if number(metrics, debiased) is not None:
        ece += f" (bias-corrected {interval(debiased)})"
    head = f"{method or 'calibrated'}: before -> after" if calibrated else "none (plain softmax)"
    return [_row("calibration", head), _row("ECE", ece), _row("NLL", nll)]


def _with_ci(metrics: Mapping[str, Any], key: str) -> str:
    return cell(number(metrics, key), number(metrics, f"{key}_ci_low"), number(metrics, f"{key}_ci_high"))


def referral_lines(metrics: Mapping[str, Any], prefix: str) -> list[str]:
    """One line: the share referred and the accuracy of the rest against the target, or AURC without a rule."""
    threshold, target = number(metrics, f"{prefix}referral_threshold"), number(metrics, f"{prefix}referral_target")
    if threshold is not None and target is not None and number(metrics, f"{prefix}referred_share") is not None:
        rest = number(metrics, f"{prefix}accuracy_not_referred")
        kept = (f"; accuracy of the rest {_with_ci(metrics, f'{prefix}accuracy_not_referred')} (target {target:g})"
                if rest is not None else "; every image referred")
        rule = f"confidence < {threshold:.3f}" if threshold > 0 else "none needed on validation"
        return [_row("referred", f"{_with_ci(metrics, f'{prefix}referred_share')} ({rule})" + kept)]
    if number(metrics, f"{prefix}selective_aurc") is not None:
        return [_row("selective", f"AURC {_with_ci(metrics, f'{prefix}selective_aurc')} (no referral rule)")]
    return []


def summary_lines(metrics: Mapping[str, Any], title: str, folder: str | Path, *, prefix: str = "test/",
                  level: float = LEVEL, calibration: str | None = None, report: bool = True,
                  tensorboard: bool = True, folder_label: str = "run folder", metrics_file: str = "metrics.json",
                  positive: str = "the second class",
                  folds: tuple[Mapping[str, Any], Mapping[str, Any]] | None = None) -> list[str]:
    """The end of a run on one screen (at most 20 lines): the headline figures with their intervals (and, for a
    cross-validation, the folds' mean ± sd beside the ensemble's value), the operating threshold, calibration
    before -> after, the validation score the checkpoint was chosen by, then the run folder, the report and
    TensorBoard's command. Every metric stays in ``metrics_file`` and report.md. ``positive``: the positive
    class of a binary task (its operating threshold is on P(positive))."""
    n = split_images(metrics, prefix)
    lines = [title + (f" ({n} images)" if n else "")]
    figures = headline_figures(metrics, prefix)
    for f in figures:
        spread = ""
        if folds and number(folds[0], f.key) is not None:
            spread = f"   folds {number(folds[0], f.key):.3f} ± {number(folds[1], f.key) or 0.0:.3f}"
        lines.append(_row(f.label, cell(f.value, f.low, f.high) + spread))
    threshold = number(metrics, f"{prefix}threshold")
    if threshold is not None:
        lines.append(_row("at threshold", f"P({positive}) >= {threshold:.3f} (chosen on validation)"))
    lines += calibration_lines(metrics, prefix, calibration)
    coverage = number(metrics, f"{prefix}conformal_coverage")
    if coverage is not None:
        lines.append(_row("prediction sets", f"coverage {_with_ci(metrics, f'{prefix}conformal_coverage')}, "
                                             f"mean size {_with_ci(metrics, f'{prefix}conformal_set_size')}"))
    lines += referral_lines(metrics, prefix)
    for key in sorted(k for k in metrics if k.startswith("val/") and k.endswith("_best")):
        lines.append(_row("chosen by", f"{key.removesuffix('_best')} {cell(number(metrics, key))} (best validation)"))
    if figures:
        notes = [f"[ ] {level * 100:g}% bootstrap intervals"] if any(f.low is not None for f in figures) else []
        notes += ["calibrated probabilities"] if any(f.key.endswith("_calibrated") for f in figures) else []
        notes.append(f"every metric: {metrics_file}" + (", report.md" if report else ""))
        lines.append("  " + "; ".join(notes))
    folder = Path(folder)
    paths = [(folder_label, str(folder))] + ([("report", str(folder / "report.md"))] if report else [])
    paths += [("TensorBoard", f"tensorboard --logdir {folder}")] if tensorboard else []
    return lines + [f"{label + ':':<13}{path}" for label, path in paths]


def tensorboard_in(loggers: Sequence[Any]) -> bool:
    """Whether a run's loggers write TensorBoard files (then the summary gives TensorBoard's command)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return any(isinstance(lg, TensorBoardLogger) for lg in loggers)


def print_summary(lines: Sequence[str]) -> None:
    """The summary on stdout, as plain text (brackets are intervals, not markup)."""
    print("\n".join(lines), flush=True)
