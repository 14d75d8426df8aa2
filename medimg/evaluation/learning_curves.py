"""Learning curves from ``<run>/history.json`` (written by ``medimg.training.callbacks.history.TrainingHistory``,
``{"monitor": name, "epochs": [record, ...]}``).

Left: training and validation loss per epoch; right: the monitored validation metric. The epochs of all
phases are laid end to end (x = epoch of the run, counting from 1); a dashed line marks where each phase
starts, labelled with its name.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of ``path`` (an empty list when there is no file yet)."""
    path = Path(path)
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    return list(data.get("epochs", [])) if isinstance(data, dict) else []


def _series(records: Sequence[dict[str, Any]], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else float(r[key]) for r in records], dtype=float)


def phase_starts(records: Sequence[dict[str, Any]]) -> list[tuple[int, str]]:
    """``(run epoch, phase)`` where each phase begins (run epochs count from 1)."""
    starts, last = [], None
    for i, r in enumerate(records, start=1):
        if r["phase"] != last:
            starts.append((i, r["phase"]))
            last = r["phase"]
    return starts


def learning_curves_figure(records: Sequence[dict[str, Any]], monitor: str | None = None) -> Figure:
    """The figure of the module docstring; ``monitor`` defaults to the name the records carry."""
    monitor = monitor or next((r.get("monitor") for r in records if r.get("monitor")), None)
    x = np.arange(1, len(records) + 1)
    fig, (ax_loss, ax_metric) = plt.subplots(1, 2, figsize=(11.0, 4.2), layout="constrained")
    ax_loss.plot(x, _series(records, "train/loss"), marker=".", label="train loss")
    ax_loss.plot(x, _series(records, "val/loss"), marker=".", label="validation loss")
    ax_loss.set(xlabel="epoch (all phases)", ylabel="loss (class-weighted cross-entropy)", title="Loss")
    if monitor:
        ax_metric.plot(x, _series(records, monitor), marker=".", color="tab:green", label=monitor)
    ax_metric.set(xlabel="epoch (all phases)", ylabel=monitor or "", title=f"Monitored metric ({monitor})")
    for ax in (ax_loss, ax_metric):
        for start, phase in phase_starts(records):
            ax.axvline(start - 0.5, color="grey", ls="--", lw=0.8)
            ax.text(start - 0.4, 1.0, phase, transform=ax.get_xaxis_transform(), fontsize=8, va="top",
                    color="dimgrey")
        ax.legend(fontsize=8, loc="center right")
    return fig


def learning_curves_from(path: str | Path) -> Figure | None:
    """The figure of the history at ``path``; None when there is no history (or it is empty)."""
    records = read_history(path)
    return learning_curves_figure(records) if records else None
