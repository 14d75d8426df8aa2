"""External validation: a checkpoint evaluated on another site's images, side by side with the site it was
trained at.

``python -m medimg.evaluate ckpt_path=<run>/checkpoints/best.ckpt dataset=<another data set>`` applies the stored
preprocessing, calibrator, operating threshold, conformal sets and referral rule as trained. When the data set is
not the run's own (``other_site``), the evaluation's report opens with a table of the two sites (``Column``):
the training run's test split (``<run>/metrics.json``) against this one, and with ``recalibrate=true`` a third
column: the same images under a calibrator, conformal threshold and referral threshold refitted on this site's
validation split (its labelled part; the weights stay as trained). Each cell is the final value (calibrated,
at the operating threshold) with its bootstrap interval; the table is also ``site_comparison.json``.

A coverage of the prediction sets clearly below its target is warned of on any site
(``conformal.coverage_warnings``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medimg.console import final_figure

# (metric, label): what the sites are compared on, in the table's order
COMPARED = (
    ("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("auroc", "AUROC"), ("pr_auc", "PR-AUC"),
    ("sensitivity", "sensitivity"), ("specificity", "specificity"), ("ece", "ECE (top label)"), ("nll", "NLL"),
    ("brier", "Brier score"), ("conformal_coverage", "prediction-set coverage"),
    ("conformal_set_size", "mean set size"), ("referred_share", "share referred"),
    ("accuracy_not_referred", "accuracy of the images not referred"),
)
SUMMARY = (("auroc", "AUROC"), ("ece", "ECE"), ("conformal_coverage", "coverage"), ("referred_share", "referred"))


def other_site(own: Any | None, evaluated: Any) -> bool:
    """Whether ``evaluated`` (DatasetSettings) holds other images than the run's own data set ``own`` (its
    DatasetSettings; None when the run's config is gone): another source, folder, or source option (a CSV,
    another generator seed or site)."""
    if own is None:
        return True
    shared = set(own.extra) & set(evaluated.extra)  # a key added since the run was trained is no difference
    return ((own.source, own.root, {k: own.extra[k] for k in shared}) !=
            (evaluated.source, evaluated.root, {k: evaluated.extra[k] for k in shared}))


def training_site_metrics(run_dir: Path) -> Mapping[str, float] | None:
    """The training run's own test metrics (``<run>/metrics.json``), or None when the run has none."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return None
    metrics = json.loads(path.read_text())
    return metrics if any(k.startswith("test/") for k in metrics) else None


@dataclass(frozen=True)
class Column:
    """One column of the comparison: a label, the metrics and their split's prefix."""

    label: str
    metrics: Mapping[str, float]
    prefix: str = "test/"

    def cell(self, name: str) -> tuple[float, float | None, float | None] | None:
        f = final_figure(self.metrics, self.prefix, name)
        return None if f is None else (f.value, f.low, f.high)


def comparison(columns: Sequence[Column]) -> list[dict[str, Any]]:
    """One row per compared metric that a column has: ``{"metric", "label", <column label>: {"value", "ci_low",
    "ci_high"} or None}`` (``site_comparison.json``)."""
    rows = []
    for name, label in COMPARED:
        cells = {c.label: c.cell(name) for c in columns}
        if any(v is not None for v in cells.values()):
            rows.append({"metric": name, "label": label, **{
                k: None if v is None else {"value": v[0], "ci_low": v[1], "ci_high": v[2]} for k, v in cells.items()}})
    return rows


def _text(cell: Mapping[str, float | None] | None) -> str:
    if cell is None:
        return "–"
    lo, hi = cell["ci_low"], cell["ci_high"]
    return f"{cell['value']:.4f}" + (f" [{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else "")


def comparison_lines(columns: Sequence[Column], notes: Sequence[str] = (),
                     title: str = "Against the training site") -> list[str]:
    """The report's section ``title``: the columns side by side (final values with their intervals), ``notes``."""
    rows = comparison(columns)
    if (len(columns) < 2 or not rows) and not notes:
        return []
    labels = [c.label for c in columns]
    lines = [f"## {title}", "",
             "Final values (calibrated probabilities; binary tasks at the operating threshold) with their bootstrap "
             "intervals. A training site's values are its run's own test split (the run's `metrics.json`); "
             "refitted: the weights as trained, the calibrator and the conformal and referral thresholds fitted on "
             "this data set's validation split, scored on the same images.", "",
             "| | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels),
             *[f"| {r['label']} | " + " | ".join(_text(r[k]) for k in labels) + " |" for r in rows], ""]
    return lines + [f"- {n}" for n in notes] + ([""] if notes else [])


def summary_line(base: Column, others: Sequence[tuple[str, Column]]) -> list[str]:
    """A console line for each ``(label, column)`` of ``others``: the headline figures from ``base`` to it
    (AUROC, ECE, coverage, share referred; those both have)."""
    out = []
    for head, col in others:
        parts = [f"{label} {a[0]:.3f} -> {b[0]:.3f}" for name, label in SUMMARY
                 if (a := base.cell(name)) is not None and (b := col.cell(name)) is not None]
        if parts:
            out.append(f"  {head + ':':<19}" + ", ".join(parts))
    return out

