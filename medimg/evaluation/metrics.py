"""Classification metrics over a whole split, from class probabilities and integer targets (no Lightning).

All values agree with scikit-learn on the same predictions; the definitions, class by class:

* ``accuracy``: fraction correct (``accuracy_score``).
* ``balanced_accuracy``: mean recall over the classes present in the targets (``balanced_accuracy_score``).
* ``precision_macro`` / ``recall_macro`` / ``f1_macro``: unweighted mean over the classes that occur in the
  targets or the predictions; a class with no predictions has precision 0, one absent from the targets recall 0
  (``precision_recall_fscore_support(average="macro", zero_division=0)``).
* ``auroc``: binary tasks: ROC-AUC of P(class 1); multiclass: one-vs-rest ROC-AUC per class, macro mean over the
  classes that have both positives and negatives in the targets (``roc_auc_score`` per class).
* ``pr_auc``: average precision (``average_precision_score``), binary: of class 1; multiclass: macro over the
  classes present in the targets.
* ``nll``: mean negative log-likelihood, probabilities clipped to [eps, 1 - eps] (``log_loss``, float64).
* ``brier``: mean over images of sum_c (p_c - 1[y = c])^2, halved for binary tasks so it equals the usual
  (p1 - y)^2 (``brier_score_loss`` with ``scale_by_half="auto"``).
* ``ece`` / ``mce``: top-label calibration error: 15 equal-width bins of the confidence max_c p_c, the mean
  (weighted by bin size, L1) and the maximum |accuracy - confidence| over non-empty bins. Bins are
  ((m-1)/15, m/15] as in Guo et al. 2017: a confidence of exactly 1 lies in the top bin.
* binary tasks also: ``ece_positive`` / ``mce_positive``: the same for P(class 1) against the 0/1 label
  (reliability of the disease probability); when an operating threshold is given, ``sensitivity`` /
  ``specificity`` / ``threshold``: recall of class 1 and of class 0 for the rule P(class 1) >= threshold.
* per class (``per_class/<class>/...``): ``precision``, ``recall``, ``f1``, ``auroc``, ``pr_auc``, ``support``.

A metric that is undefined on the given targets (ROC-AUC of a class with no positive image) is left out.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torchmetrics.functional.classification import (
    binary_auroc,
    binary_average_precision,
    binary_calibration_error,
    binary_recall,
    binary_specificity,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_average_precision,
    multiclass_confusion_matrix,
    multiclass_f1_score,
    multiclass_precision,
    multiclass_recall,
)

N_BINS = 15
_EPS = float(np.finfo(np.float64).eps)


def _check(probs: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None) -> None:
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {tuple(probs.shape)}")
    if targets.ndim != 1 or len(targets) != len(probs):
        raise ValueError(f"targets must have shape ({len(probs)},), got {tuple(targets.shape)}")
    if len(targets) == 0:
        raise ValueError("no predictions to evaluate (empty split)")
    c = probs.shape[1] if num_classes is None else num_classes
    if int(targets.min()) < 0 or int(targets.max()) >= c:
        raise ValueError(f"targets must be class indices in 0..{c - 1}, got range "
                         f"{int(targets.min())}..{int(targets.max())}")


def predict_labels(probs: torch.Tensor, threshold: float | None = None) -> torch.Tensor:
    """Class decisions: binary tasks with a threshold call class 1 when P(class 1) >= threshold; else argmax."""
    if probs.shape[1] == 2 and threshold is not None:
        return (probs[:, 1] >= threshold).long()
    return probs.argmax(1)


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Counts, rows = true class, columns = predicted class."""
    return multiclass_confusion_matrix(preds.long(), targets.long(), num_classes)


def calibration_error(confidence: torch.Tensor, correct: torch.Tensor, norm: str = "l1",
                      n_bins: int = N_BINS) -> float:
    """ECE (``norm="l1"``) or MCE (``norm="max"``) of confidences against 0/1 outcomes, equal-width bins."""
    # torchmetrics bins are [a, b) plus a bin of its own for exactly 1; moving every positive confidence one
    # float64 step down gives the bins (a, b] (with 1 in the top bin) and changes the result by ~1e-16 at most
    conf = confidence.double()
    conf = torch.where(conf > 0, torch.nextafter(conf, torch.zeros_like(conf)), conf)
    return float(binary_calibration_error(conf, correct.long(), n_bins=n_bins, norm=norm))


def nll(probs: torch.Tensor, targets: torch.Tensor) -> float:
    p = probs.double().clamp(_EPS, 1 - _EPS).gather(1, targets.long().view(-1, 1))
    return float(-p.log().mean())


def brier(probs: torch.Tensor, targets: torch.Tensor) -> float:
    onehot = torch.nn.functional.one_hot(targets.long(), probs.shape[1]).double()
    score = ((probs.double() - onehot) ** 2).sum(1).mean()
    return float(score * 0.5 if probs.shape[1] == 2 else score)


def per_class_ranking(probs: torch.Tensor, targets: torch.Tensor) -> tuple[list[float], list[float]]:
    """One-vs-rest ROC-AUC and average precision per class; NaN where the class has no positives (or, for
    ROC-AUC, no negatives) in the targets."""
    c = probs.shape[1]
    p, y = probs.double(), targets.long()
    support = torch.bincount(y, minlength=c)
    if c == 2:
        auc1 = float(binary_auroc(p[:, 1], y)) if 0 < int(support[1]) < len(y) else math.nan
        aucs = [auc1, auc1]
        aps = [float(binary_average_precision(p[:, k], (y == k).long())) if int(support[k]) else math.nan
               for k in range(2)]
        return aucs, aps
    aucs = multiclass_auroc(p, y, c, average="none").tolist()
    aps = multiclass_average_precision(p, y, c, average="none").tolist()
    for k in range(c):
        if int(support[k]) == 0:
            aucs[k] = aps[k] = math.nan
        elif int(support[k]) == len(y):
            aucs[k] = math.nan
    return [float(a) for a in aucs], [float(a) for a in aps]


def _nanmean(values: Sequence[float]) -> float:
    vals = [v for v in values if not math.isnan(v)]
    return float(sum(vals) / len(vals)) if vals else math.nan


def classification_metrics(probs: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str],
                           threshold: float | None = None, n_bins: int = N_BINS) -> dict[str, float]:
    """Every metric of the module docstring, keyed by name (no split prefix); undefined metrics left out."""
    c = len(class_names)
    if probs.shape[1] != c:
        raise ValueError(f"probabilities have {probs.shape[1]} columns but there are {c} classes {list(class_names)}")
    _check(probs, targets)
    probs, targets = probs.detach().double().cpu(), targets.detach().long().cpu()
    preds = predict_labels(probs, threshold)
    support = torch.bincount(targets, minlength=c)

    prec = multiclass_precision(preds, targets, c, average="none", zero_division=0)
    rec = multiclass_recall(preds, targets, c, average="none", zero_division=0)
    f1 = multiclass_f1_score(preds, targets, c, average="none", zero_division=0)
    aucs, aps = per_class_ranking(probs, targets)
    present = support > 0
    out: dict[str, float] = {
        "accuracy": float(multiclass_accuracy(preds, targets, c, average="micro")),
        "balanced_accuracy": float(rec[present].mean()),
        "precision_macro": float(multiclass_precision(preds, targets, c, average="macro", zero_division=0)),
        "recall_macro": float(multiclass_recall(preds, targets, c, average="macro", zero_division=0)),
        "f1_macro": float(multiclass_f1_score(preds, targets, c, average="macro", zero_division=0)),
        "auroc": aucs[1] if c == 2 else _nanmean(aucs),
        "pr_auc": aps[1] if c == 2 else _nanmean(aps),
        "nll": nll(probs, targets),
        "brier": brier(probs, targets),
    }
    conf, top = probs.max(1)
    hit = (top == targets).long()  # top-label outcome (argmax), whatever the operating threshold
    out["ece"] = calibration_error(conf, hit, "l1", n_bins)
    out["mce"] = calibration_error(conf, hit, "max", n_bins)
    if c == 2:
        out["ece_positive"] = calibration_error(probs[:, 1], targets, "l1", n_bins)
        out["mce_positive"] = calibration_error(probs[:, 1], targets, "max", n_bins)
    if c == 2 and threshold is not None:
        if int(support[1]) > 0:
            out["sensitivity"] = float(binary_recall(preds, targets, zero_division=0))
        if int(support[0]) > 0:
            out["specificity"] = float(binary_specificity(preds, targets))
        out["threshold"] = float(threshold)
    for k, name in enumerate(class_names):
        key = f"per_class/{name}/"
        out[key + "precision"] = float(prec[k])
        out[key + "recall"] = float(rec[k])
        out[key + "f1"] = float(f1[k])
        out[key + "auroc"] = aucs[k]
        out[key + "pr_auc"] = aps[k]
        out[key + "support"] = float(support[k])
    return {k: v for k, v in out.items() if not math.isnan(v)}
