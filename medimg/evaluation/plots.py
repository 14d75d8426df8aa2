"""Evaluation figures (matplotlib, Agg backend): each function takes predictions and returns a Figure.

``figures.evaluation_figures`` makes the standard set from them: confusion matrices (counts and row-normalised), ROC and
precision-recall curves (one per class, plus the macro average), reliability diagrams before and after
calibration, and per-class F1; ``subgroup_figure`` the subgroup audit.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from torchmetrics.functional.classification import (  # noqa: E402
    binary_auroc,
    binary_average_precision,
    binary_precision_recall_curve,
    binary_roc,
)

from medimg.evaluation.metrics import N_BINS  # noqa: E402
from medimg.files import save_figure  # noqa: E402


def _size_for(n_classes: int) -> tuple[float, float]:
    s = min(4.0 + 0.6 * n_classes, 12.0)
    return s + 1.0, s


def confusion_matrix_figure(cm: torch.Tensor, class_names: Sequence[str], normalize: bool, title: str) -> Figure:
    """Rows = true class, columns = predicted; ``normalize`` divides each row by its count (recall on the diagonal)."""
    m = cm.double().numpy()
    if normalize:
        totals = m.sum(1, keepdims=True)
        m = np.divide(m, totals, out=np.zeros_like(m), where=totals > 0)
    fig, ax = plt.subplots(figsize=_size_for(len(class_names)), layout="constrained")
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1 if normalize else max(1.0, m.max()))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ticks = range(len(class_names))
    ax.set_xticks(ticks, class_names, rotation=45, ha="right")
    ax.set_yticks(ticks, class_names)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if len(class_names) <= 15:
        hi = m.max() / 2 if m.max() > 0 else 0.5
        for i in ticks:
            for j in ticks:
                txt = f"{m[i, j]:.2f}" if normalize else f"{int(m[i, j])}"
                ax.text(j, i, txt, ha="center", va="center", fontsize=8, color="white" if m[i, j] > hi else "black")
    return fig


def _one_vs_rest(probs: torch.Tensor, targets: torch.Tensor) -> list[int]:
    """Classes with a curve: class 1 for binary tasks; otherwise every class with positives and negatives."""
    if probs.shape[1] == 2:
        return [1] if 0 < int(targets.sum()) < len(targets) else []
    return [k for k in range(probs.shape[1]) if 0 < int((targets == k).sum()) < len(targets)]


def roc_figure(probs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str],
               operating_threshold: float | None = None, title: str = "ROC curves") -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
    grid = np.linspace(0, 1, 201)
    tprs, aucs = [], []
    for k in _one_vs_rest(probs, targets):
        yk = (targets == k).long()
        fpr, tpr, _ = (t.numpy() for t in binary_roc(probs[:, k].double(), yk))
        auc = float(binary_auroc(probs[:, k].double(), yk))
        aucs.append(auc)
        tprs.append(np.interp(grid, fpr, tpr))
        ax.plot(fpr, tpr, lw=1.2, label=f"{class_names[k]} (AUC {auc:.3f})")
        if operating_threshold is not None and probs.shape[1] == 2:
            pred = probs[:, 1] >= operating_threshold
            sens = float((pred & (yk == 1)).sum() / (yk == 1).sum())
            fp = float((pred & (yk == 0)).sum() / (yk == 0).sum())
            ax.scatter([fp], [sens], color="red", zorder=3, label=f"operating point (threshold {operating_threshold:.3f})")
    if len(tprs) > 1:
        ax.plot(grid, np.mean(tprs, 0), color="black", lw=2.2, ls="--",
                label=f"macro average (mean AUC {np.mean(aucs):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false positive rate (1 - specificity)",
           ylabel="true positive rate (sensitivity)", title=title)
    ax.legend(loc="lower right", fontsize=8)
    return fig


def pr_figure(probs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str],
              title: str = "Precision-recall curves") -> Figure:
    fig, ax = plt.subplots(figsize=(6.5, 5.5), layout="constrained")
    grid = np.linspace(0, 1, 201)
    precs, aps = [], []
    ks = [1] if probs.shape[1] == 2 else range(probs.shape[1])
    for k in ks:
        yk = (targets == k).long()
        if int(yk.sum()) == 0:
            continue
        prec, rec, _ = (t.numpy() for t in binary_precision_recall_curve(probs[:, k].double(), yk))
        ap = float(binary_average_precision(probs[:, k].double(), yk))
        aps.append(ap)
        order = np.argsort(rec)
        precs.append(np.interp(grid, rec[order], np.maximum.accumulate(prec[order][::-1])[::-1]))
        ax.step(rec, prec, where="post", lw=1.2, label=f"{class_names[k]} (AP {ap:.3f}, prevalence "
                                                        f"{float(yk.double().mean()):.2f})")
    if len(precs) > 1:
        ax.plot(grid, np.mean(precs, 0), color="black", lw=2.2, ls="--",
                label=f"macro average (mean AP {np.mean(aps):.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="recall", ylabel="precision", title=title)
    ax.legend(loc="lower left", fontsize=8)
    return fig


def _reliability_bins(conf: np.ndarray, outcome: np.ndarray, n_bins: int):
    edges = np.linspace(0, 1, n_bins + 1)
    ids = np.searchsorted(edges[1:-1], conf)  # bins (a, b], as the calibration error uses
    count = np.bincount(ids, minlength=n_bins)
    acc = np.bincount(ids, weights=outcome, minlength=n_bins)
    mean_conf = np.bincount(ids, weights=conf, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        return edges, count, acc / count, mean_conf / count


def _reliability_axes(ax, conf: np.ndarray, outcome: np.ndarray, title: str, ece: float | None,
                      n_bins: int, xlabel: str, ylabel: str) -> None:
    edges, count, acc, mean_conf = _reliability_bins(conf, outcome, n_bins)
    width = edges[1] - edges[0]
    ok = count > 0
    ax.bar(edges[:-1][ok], acc[ok], width=width, align="edge", color="tab:blue", edgecolor="black", lw=0.5,
           label="observed frequency")
    ax.bar(edges[:-1][ok], (mean_conf - acc)[ok], bottom=acc[ok], width=width, align="edge", fill=False,
           hatch="///", edgecolor="tab:red", lw=0.8, label="gap to mean predicted probability")
    ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
    ax2 = ax.twinx()
    ax2.plot(edges[:-1] + width / 2, count / max(1, count.sum()), color="black", marker=".", lw=0.8,
             label="fraction of images")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("fraction of images", fontsize=8)
    label = f"{title}" + (f"\nECE {ece:.4f}" if ece is not None and not math.isnan(ece) else "")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel=xlabel, ylabel=ylabel, title=label)
    ax.legend(loc="upper left", fontsize=7)


def reliability_figure(panels: Sequence[tuple[str, torch.Tensor]], targets: torch.Tensor,
                       eces: Sequence[float | None], positive_eces: Sequence[float | None] | None = None,
                       class_names: Sequence[str] | None = None, n_bins: int = N_BINS) -> Figure:
    """Reliability diagrams, one column per probability set (e.g. uncalibrated, calibrated).

    Top row: top-label confidence against accuracy (what ``ece`` measures). Binary tasks get a second row:
    P(class 1) against the frequency of class 1 (what ``ece_positive`` measures).
    """
    binary = panels[0][1].shape[1] == 2
    rows = 2 if binary else 1
    fig, axes = plt.subplots(rows, len(panels), figsize=(5.2 * len(panels), 4.6 * rows), layout="constrained",
                             squeeze=False)
    y = targets.numpy()
    for j, (name, p) in enumerate(panels):
        p = p.double().numpy()
        _reliability_axes(axes[0, j], p.max(1), (p.argmax(1) == y).astype(float), f"{name}: top label", eces[j],
                          n_bins, "confidence (top-label probability)", "accuracy")
        if binary:
            pos = class_names[1] if class_names else "class 1"
            _reliability_axes(axes[1, j], p[:, 1], (y == 1).astype(float), f"{name}: P({pos})",
                              positive_eces[j] if positive_eces else None, n_bins, f"predicted P({pos})",
                              f"observed frequency of {pos}")
    return fig


def per_class_f1_figure(class_names: Sequence[str], series: Sequence[tuple[str, Sequence[float]]]) -> Figure:
    """Grouped bars: F1 per class for each named set of predictions."""
    fig, ax = plt.subplots(figsize=(max(5.0, 1.0 + 0.9 * len(class_names)), 4.2), layout="constrained")
    x = np.arange(len(class_names))
    w = 0.8 / len(series)
    for i, (name, vals) in enumerate(series):
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, width=w, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(x, class_names, rotation=30, ha="right")
    ax.set(ylim=(0, 1.08), ylabel="F1", title="F1 per class")
    if len(series) > 1:
        ax.legend(fontsize=8)
    return fig


def subgroup_figure(audit) -> Figure:
    """One panel per audited column (rows) and metric (columns): each subgroup's value with its interval,
    the overall value as a dashed line; subgroups flagged as clearly worse in red."""
    table, metrics = audit.table, audit.metrics
    columns = list(dict.fromkeys(table["column"]))
    heights = [max(1.6, 0.38 * int((table["column"] == c).sum()) + 0.9) for c in columns]
    fig, axes = plt.subplots(len(columns), len(metrics), figsize=(4.4 * len(metrics), sum(heights)),
                             squeeze=False, layout="constrained", gridspec_kw={"height_ratios": heights})
    for i, col in enumerate(columns):
        part = table[table["column"] == col].reset_index(drop=True)
        y = np.arange(len(part))[::-1]
        for j, m in enumerate(metrics):
            ax = axes[i, j]
            lo, hi, v = (part[f"{m}_ci_low"].to_numpy(float), part[f"{m}_ci_high"].to_numpy(float),
                         part[m].to_numpy(float))
            flagged = [m in str(f).split(", ") for f in part["flagged"]]
            err = np.nan_to_num(np.vstack([v - lo, hi - v]), nan=0.0)
            for k in range(len(part)):
                ax.errorbar(v[k], y[k], xerr=err[:, k:k + 1], fmt="o", ms=4, capsize=3,
                            color="tab:red" if flagged[k] else "tab:blue")
            ax.axvline(audit.overall.get(m, np.nan), color="grey", ls="--", lw=1, label="overall")
            ax.set_yticks(y, [f"{val} (n={n})" for val, n in zip(part["value"], part["images"])], fontsize=8)
            ax.set_ylim(-0.7, len(part) - 0.3)
            ax.set_xlabel(m.replace("_", " "))
            if j == 0:
                ax.set_title(f"{col}", fontsize=9, loc="left")
    return fig


def save_figures(figures: dict[str, Figure], folder: Path) -> dict[str, Path]:
    """Write each figure as ``<folder>/<name>.png`` (atomically); returns the paths by name."""
    return {name: save_figure(fig, folder / f"{name}.png", dpi=110) for name, fig in figures.items()}


def close_figures(figures: dict[str, Figure]) -> None:
    for fig in figures.values():
        plt.close(fig)
