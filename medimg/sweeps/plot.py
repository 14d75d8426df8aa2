"""The sweep figure: the optimised metric against each swept parameter, one panel per parameter.

Numeric parameters are drawn on a numeric axis, logarithmic for the parameters an Optuna search draws on a log
scale (``tag(log, ...)``) and for positive values that span more than two decades; other parameters as
categories. The best job is a star; failed jobs are
red crosses along the bottom of each panel, so a failing region of the search space shows too.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from matplotlib.figure import Figure


def _numeric(values: pd.Series) -> pd.Series | None:
    numbers = pd.to_numeric(values, errors="coerce")
    return numbers if numbers[values.notna()].notna().all() and values.notna().any() else None


def _positions(values: pd.Series, ax, log_scale: bool) -> np.ndarray:
    """x positions of ``values`` on ``ax``: the numbers themselves, or category indices with labels."""
    numbers = _numeric(values)
    if numbers is not None:
        positive = numbers[numbers > 0]
        if len(positive) == numbers.notna().sum() and (log_scale or positive.max() / positive.min() > 100):
            ax.set_xscale("log")
        return numbers.to_numpy(dtype=float)
    categories = list(dict.fromkeys(values.astype(str)))
    ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right")
    return np.array([categories.index(v) for v in values.astype(str)], dtype=float)


def _panel(ax, x: np.ndarray, frame: pd.DataFrame, metric: str, param: str) -> None:
    ok = frame["status"].eq("ok").to_numpy() & frame[metric].notna().to_numpy()
    y = frame[metric].to_numpy(dtype=float)
    ax.scatter(x[ok], y[ok], color="tab:blue", label="job")
    best = frame["best"].to_numpy(dtype=bool)
    if best.any():
        ax.scatter(x[best], y[best], marker="*", s=220, color="gold", edgecolor="black", zorder=3, label="best")
    failed = frame["status"].eq("failed").to_numpy()
    if failed.any():
        floor = np.nanmin(y[ok]) if ok.any() else 0.0
        ax.scatter(x[failed], np.full(failed.sum(), floor), marker="x", color="red", zorder=3, label="failed")
    ax.set_xlabel(param)
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)


def sweep_figure(frame: pd.DataFrame, params: list[str], metric: str, log_params: set[str] = frozenset()) -> Figure:
    """One panel per swept parameter (or the metric per job when nothing varied); ``log_params`` get a log axis."""
    panels = params or ["job"]
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.6 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, param in zip(axes, panels):
        _panel(ax, _positions(frame[param], ax, param in log_params), frame, metric, param)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    axes[0].legend(loc="best", fontsize="small")
    n_failed = int(frame["status"].eq("failed").sum())
    fig.suptitle(f"{metric} over {len(frame)} jobs" + (f" ({n_failed} failed)" if n_failed else ""))
    return fig
