"""The headline metrics of many resamples at once, from per-image arrays and a matrix of image counts.

A resample of N images is a row of ``counts`` ``(B, N)``: how often each image was drawn. Every metric is a
weighted sum over images, so B resamples cost a few matrix products instead of B calls of the metric suite;
``counts`` of ones give the metrics of the sample itself, equal to ``medimg.evaluation.metrics`` (and so to
scikit-learn; the bootstrap tests check it). Definitions follow metrics.py:

* ``accuracy``, ``balanced_accuracy`` (mean recall over the classes present), ``f1_macro`` (mean over the
  classes that occur in the targets or the predictions of that resample; zero division gives 0);
* ``auroc`` / ``pr_auc``: binary tasks class 1, multiclass the one-vs-rest mean over the classes with positives
  (and, for ROC-AUC, negatives). ROC-AUC is the Mann-Whitney statistic with ties counted half; average precision
  sums precision times the recall gained at each distinct score, from the highest score down;
* ``ece``: top-label, 15 equal-width bins ((m-1)/15, m/15]; ``nll`` (probabilities clipped to [eps, 1 - eps]),
  ``brier`` (halved for binary tasks);
* binary tasks with an operating threshold: ``sensitivity``, ``specificity``.
"""

from __future__ import annotations

import numpy as np

from medimg.evaluation.metrics import N_BINS

_EPS = float(np.finfo(np.float64).eps)


def confusion_counts(counts: np.ndarray, targets: np.ndarray, preds: np.ndarray, c: int) -> np.ndarray:
    """Weighted confusion matrices ``(B, C, C)``, rows = true class."""
    onehot = np.zeros((len(targets), c * c))
    onehot[np.arange(len(targets)), targets * c + preds] = 1.0
    return (counts @ onehot).reshape(-1, c, c)


def decision_metrics(cm: np.ndarray, present: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, balanced accuracy and macro F1 of each resample's confusion matrix."""
    tp = np.diagonal(cm, axis1=1, axis2=2)
    true, pred = cm.sum(2), cm.sum(1)
    n = true.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(true > 0, tp / true, 0.0)
        denom = true + pred
        f1 = np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)
    occurs = denom > 0
    return {
        "accuracy": tp.sum(1) / n,
        "balanced_accuracy": recall[:, present].mean(1),
        "f1_macro": (f1 * occurs).sum(1) / occurs.sum(1),
    }


def _sorted_groups(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image order by ascending score and the start of each run of equal scores in it."""
    order = np.argsort(scores, kind="stable")
    s = scores[order]
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])
    return order, starts


def ranking_metrics(counts: np.ndarray, scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ROC-AUC and average precision of ``scores`` for the 0/1 ``positive`` labels, per resample."""
    order, starts = _sorted_groups(scores)
    w = counts[:, order]
    pos = positive[order].astype(np.float64)
    wp = np.add.reduceat(w * pos, starts, axis=1)   # positive weight at each distinct score, ascending
    wn = np.add.reduceat(w * (1 - pos), starts, axis=1)
    total_p, total_n = wp.sum(1), wn.sum(1)
    below = np.cumsum(wn, 1) - wn
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (wp * (below + 0.5 * wn)).sum(1) / (total_p * total_n)
        tp_desc = np.cumsum(wp[:, ::-1], 1)
        fp_desc = np.cumsum(wn[:, ::-1], 1)
        precision = np.where(tp_desc + fp_desc > 0, tp_desc / (tp_desc + fp_desc), 0.0)
        ap = (wp[:, ::-1] * precision).sum(1) / total_p
    return auc, ap


def class_ranking(counts: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """``auroc`` and ``pr_auc`` per resample as metrics.py averages them (NaN where undefined)."""
    c = probs.shape[1]
    support = np.bincount(targets, minlength=c)
    if c == 2:
        auc, ap = ranking_metrics(counts, probs[:, 1], targets == 1)
        out = {"pr_auc": ap}
        if 0 < support[1] < len(targets):
            out["auroc"] = auc
        return out
    aucs, aps = [], []
    for k in np.flatnonzero(support):
        auc, ap = ranking_metrics(counts, probs[:, k], targets == k)
        aps.append(ap)
        if support[k] < len(targets):
            aucs.append(auc)
    out = {"pr_auc": np.mean(aps, 0)}
    if aucs:
        out["auroc"] = np.mean(aucs, 0)
    return out


def probability_metrics(counts: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> dict[str, np.ndarray]:
    """``ece`` (top label), ``nll`` and ``brier`` per resample."""
    n = counts.sum(1)
    conf, top = probs.max(1), probs.argmax(1)
    hit = (top == targets).astype(np.float64)
    bins = np.searchsorted(np.linspace(0, 1, N_BINS + 1)[1:-1], conf, side="left")  # bins ((m-1)/15, m/15]
    onehot = np.zeros((len(conf), N_BINS))
    onehot[np.arange(len(conf)), bins] = 1.0
    gap = np.abs(counts @ (onehot * conf[:, None]) - counts @ (onehot * hit[:, None])).sum(1)
    p_true = np.clip(probs[np.arange(len(targets)), targets], _EPS, 1 - _EPS)
    onehot_y = np.eye(probs.shape[1])[targets]
    brier = ((probs - onehot_y) ** 2).sum(1) * (0.5 if probs.shape[1] == 2 else 1.0)
    return {"ece": gap / n, "nll": counts @ -np.log(p_true) / n, "brier": counts @ brier / n}


def operating_metrics(cm: np.ndarray, support: np.ndarray) -> dict[str, np.ndarray]:
    """Binary: sensitivity (recall of class 1) and specificity (recall of class 0) per resample, for the
    classes the sample has."""
    out = {}
    with np.errstate(invalid="ignore", divide="ignore"):
        if support[1] > 0:
            out["sensitivity"] = cm[:, 1, 1] / cm[:, 1].sum(1)
        if support[0] > 0:
            out["specificity"] = cm[:, 0, 0] / cm[:, 0].sum(1)
    return out


def resampled_metrics(counts: np.ndarray, probs: np.ndarray, targets: np.ndarray,
                      threshold: float | None = None) -> dict[str, np.ndarray]:
    """Every metric of the module docstring for each row of ``counts``: ``{name: (B,) array}``."""
    c = probs.shape[1]
    preds = (probs[:, 1] >= threshold).astype(np.int64) if c == 2 and threshold is not None else probs.argmax(1)
    cm = confusion_counts(counts, targets, preds, c)
    support = np.bincount(targets, minlength=c)
    out = {**decision_metrics(cm, support > 0), **class_ranking(counts, probs, targets),
           **probability_metrics(counts, probs, targets)}
    if c == 2 and threshold is not None:
        out.update(operating_metrics(cm, support))
    return out
