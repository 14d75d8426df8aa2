"""Subgroup audit: the metrics per value of metadata columns (sex, age band, body site, scanner, site ...).

For each column of ``dataset.subgroup_columns`` the split's images are grouped by their value (numbers binned
by ``dataset.subgroup_bins.<column>``: edges ``[a, b, c]`` give the bands ``[a, b)`` and ``[b, c)``; empty and
unparsable cells, and numbers outside the edges, form the group ``missing``). Each subgroup gets its image
count, the metrics (``medimg.evaluation.metrics`` on its images alone, so they equal scikit-learn's on that
subset) and bootstrap intervals (``medimg.evaluation.bootstrap``). A subgroup with at least ``min_images``
images whose interval lies wholly on the wrong side of the overall value (upper end below it; for the
lower-is-better metrics ECE, NLL, Brier: lower end above it) is flagged, and a warning is logged.

A column that the data table does not have is a ``ConfigError`` that lists the columns it has; a band of
``subgroup_bins`` that no image of the split falls in is a ``DataError``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from medimg.errors import ConfigError, DataError
from medimg.evaluation.bootstrap import bootstrap_intervals
from medimg.evaluation.metrics import classification_metrics

log = logging.getLogger(__name__)

MISSING = "missing"
LOWER_IS_BETTER = ("ece", "nll", "brier", "mce")


@dataclass
class SubgroupAudit:
    """``table``: one row per (column, value) with ``images``, each metric and its ``_ci_low``/``_ci_high``,
    and ``flagged`` (the metrics where the subgroup falls clearly behind); ``overall``: the whole split's values."""

    table: pd.DataFrame
    overall: dict[str, float]
    metrics: list[str]
    warnings: list[str] = field(default_factory=list)


def band_label(lo: float, hi: float) -> str:
    return f"[{lo:g}, {hi:g})"


def check_subgroup_columns(table: pd.DataFrame, columns: Sequence[str]) -> None:
    """Fail before any training when a subgroup column is missing from the data table (ConfigError)."""
    for column in columns:
        if column not in table.columns:
            _missing_column(table, column)


def _missing_column(table: pd.DataFrame, column: str) -> None:
    extra = [c for c in table.columns if c not in ("path", "label", "group", "split")]
    raise ConfigError(f"subgroup column {column!r} (dataset.subgroup_columns) is not in the data table; its "
                      f"metadata columns are {extra or 'none'} (and label, group). Fix "
                      f"dataset.subgroup_columns or give the data set that column.")


def subgroup_values(table: pd.DataFrame, column: str, bins: Sequence[float] | None = None,
                    split: str = "test") -> pd.Series:
    """The subgroup of each row of ``table`` for ``column``: a categorical of text values (numbers banded by
    ``bins``), its categories in report order (bands by their edges, text sorted, ``missing`` last)."""
    if column not in table.columns:
        _missing_column(table, column)
    values = table[column].astype(str).str.strip().reset_index(drop=True)
    if not bins:
        values = values.where(~values.isin(["", "nan", "None"]), MISSING)
        order = sorted(values.unique(), key=lambda v: (v == MISSING, v))
        return pd.Series(pd.Categorical(values, categories=order))
    edges = [float(b) for b in bins]
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ConfigError(f"dataset.subgroup_bins.{column}={list(bins)}: give at least two increasing edges")
    numbers = pd.to_numeric(values, errors="coerce").to_numpy(float)
    idx = np.searchsorted(edges, numbers, side="right") - 1
    inside = np.isfinite(numbers) & (idx >= 0) & (idx < len(edges) - 1)
    labels = [band_label(edges[i], edges[i + 1]) for i in range(len(edges) - 1)]
    out = [labels[i] if ok else MISSING for i, ok in zip(idx, inside)]
    empty = [lab for lab in labels if lab not in out]
    if empty:
        raise DataError(f"subgroup {column} {empty} has no images in the {split} split (bands of "
                        f"dataset.subgroup_bins.{column}={list(bins)}); merge or drop those bands")
    return pd.Series(pd.Categorical(out, categories=[*labels, *([MISSING] if MISSING in out else [])]))


def _flag(metric: str, ci: tuple[float, float] | None, overall: float | None) -> bool:
    if ci is None or overall is None or math.isnan(overall):
        return False
    return ci[0] > overall if metric in LOWER_IS_BETTER else ci[1] < overall


def subgroup_row(column: str, value: str, probs: torch.Tensor, targets: torch.Tensor,
                 class_names: Sequence[str], threshold: float | None, metrics: Sequence[str],
                 bootstrap: Mapping[str, float]) -> dict:
    """Count, metrics and intervals of one subgroup."""
    point = classification_metrics(probs, targets, class_names, threshold=threshold)
    resamples = int(bootstrap["bootstrap_resamples"])
    cis = bootstrap_intervals(probs, targets, resamples, float(bootstrap["interval_level"]),
                              int(bootstrap["bootstrap_seed"]), threshold) if resamples > 0 else {}
    row: dict = {"column": column, "value": value, "images": len(targets)}
    for m in metrics:
        row[m] = point.get(m, math.nan)
        lo, hi = cis.get(m, (math.nan, math.nan))
        row[f"{m}_ci_low"], row[f"{m}_ci_high"] = lo, hi
    return row


def subgroup_audit(probs: torch.Tensor, targets: torch.Tensor, table: pd.DataFrame, class_names: Sequence[str],
                   columns: Sequence[str], bins: Mapping[str, Sequence[float]] | None, metrics: Sequence[str],
                   bootstrap: Mapping[str, float], min_images: int, threshold: float | None = None,
                   split: str = "test") -> SubgroupAudit:
    """The audit of ``columns`` over the rows of ``table`` (aligned with ``probs`` and ``targets``)."""
    if len(table) != len(targets):
        raise ValueError(f"the table has {len(table)} rows for {len(targets)} predictions")
    overall = classification_metrics(probs, targets, class_names, threshold=threshold)
    overall = {m: overall.get(m, math.nan) for m in metrics}
    rows, warnings = [], []
    for column in columns:
        groups = subgroup_values(table, column, (bins or {}).get(column), split)
        for value in groups.cat.categories:
            mask = torch.from_numpy((groups == value).to_numpy(bool, copy=True))
            row = subgroup_row(column, value, probs[mask], targets[mask], class_names, threshold, metrics,
                               bootstrap)
            flagged = [m for m in metrics if row["images"] >= min_images
                       and _flag(m, (row[f"{m}_ci_low"], row[f"{m}_ci_high"]), overall[m])]
            row["flagged"] = ", ".join(flagged)
            for m in flagged:
                warnings.append(f"subgroup {column}={value} ({row['images']} images): {m} {row[m]:.3f} "
                                f"[{row[f'{m}_ci_low']:.3f}, {row[f'{m}_ci_high']:.3f}] is clearly worse than the "
                                f"overall {overall[m]:.3f}")
            rows.append(row)
    for w in warnings:
        log.warning(w)
    return SubgroupAudit(table=pd.DataFrame(rows), overall=overall, metrics=list(metrics), warnings=warnings)
