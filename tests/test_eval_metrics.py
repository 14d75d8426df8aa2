"""Every metric of medimg.evaluation.metrics against scikit-learn on the same predictions."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    brier_score_loss,
    confusion_matrix,
    log_loss,
    precision_recall_fscore_support,
    roc_auc_score,
)

from medimg.evaluation import metrics as M

TOL = 1e-6


def _sk_calibration_error(outcome: np.ndarray, conf: np.ndarray, norm: str, n_bins: int = 15) -> float:
    """ECE / MCE from sklearn's calibration_curve (uniform bins (a, b]) plus its bin counts."""
    prob_true, prob_pred = calibration_curve(outcome, conf, n_bins=n_bins, strategy="uniform", pos_label=1)
    bins = np.linspace(0.0, 1.0, n_bins + 1)
    counts = np.bincount(np.searchsorted(bins[1:-1], conf), minlength=n_bins)
    counts = counts[counts > 0]
    gaps = np.abs(prob_true - prob_pred)
    return float(np.sum(counts / len(conf) * gaps)) if norm == "l1" else float(gaps.max())


def sklearn_metrics(probs: np.ndarray, y: np.ndarray, names: list[str], threshold: float | None) -> dict[str, float]:
    c = probs.shape[1]
    pred = (probs[:, 1] >= threshold).astype(int) if (c == 2 and threshold is not None) else probs.argmax(1)
    present = [k for k in range(c) if (y == k).any()]
    ranked = [k for k in present if not (y == k).all()]
    p, r, f, _ = precision_recall_fscore_support(y, pred, average="macro", zero_division=0)
    pc, rc, fc, sc = precision_recall_fscore_support(y, pred, labels=list(range(c)), average=None, zero_division=0)
    out = {
        "accuracy": accuracy_score(y, pred),
        "balanced_accuracy": balanced_accuracy_score(y, pred),
        "precision_macro": p, "recall_macro": r, "f1_macro": f,
        "nll": log_loss(y, probs, labels=list(range(c))),
        "brier": brier_score_loss(y, probs, labels=list(range(c))),
    }
    auc = {k: roc_auc_score((y == k).astype(int), probs[:, k]) for k in ranked}
    ap = {k: average_precision_score((y == k).astype(int), probs[:, k]) for k in present}
    if c == 2:
        if len(ranked) == 2:
            out["auroc"] = roc_auc_score(y, probs[:, 1])
        if 1 in present:
            out["pr_auc"] = average_precision_score(y, probs[:, 1])
    else:
        if ranked:
            out["auroc"] = float(np.mean([auc[k] for k in ranked]))
        out["pr_auc"] = float(np.mean([ap[k] for k in present]))
        if len(ranked) == c:  # every class present: sklearn's own one-vs-rest macro must agree
            assert abs(out["auroc"] - roc_auc_score(y, probs, multi_class="ovr", average="macro")) < 1e-12
    conf, hit = probs.max(1), (probs.argmax(1) == y).astype(int)
    out["ece"] = _sk_calibration_error(hit, conf, "l1")
    out["mce"] = _sk_calibration_error(hit, conf, "max")
    if c == 2:
        out["ece_positive"] = _sk_calibration_error(y, probs[:, 1], "l1")
        out["mce_positive"] = _sk_calibration_error(y, probs[:, 1], "max")
        if threshold is not None:
            if (y == 1).any():
                out["sensitivity"] = rc[1]
            if (y == 0).any():
                out["specificity"] = rc[0]
            out["threshold"] = threshold
    for k, name in enumerate(names):
        key = f"per_class/{name}/"
        out.update({key + "precision": pc[k], key + "recall": rc[k], key + "f1": fc[k], key + "support": sc[k]})
        if k in auc:
            out[key + "auroc"] = auc[k]
        elif c == 2 and len(ranked) == 2:
            out[key + "auroc"] = auc[1 - k]
        if k in ap:
            out[key + "pr_auc"] = ap[k]
    return {k: float(v) for k, v in out.items()}


def _compare(probs: np.ndarray, y: np.ndarray, threshold: float | None = None) -> dict[str, float]:
    names = [f"c{k}" for k in range(probs.shape[1])]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn / torchmetrics warn about absent classes; values are compared
        ours = M.classification_metrics(torch.from_numpy(probs), torch.from_numpy(y), names, threshold=threshold)
        ref = sklearn_metrics(probs, y, names, threshold)
    assert sorted(ours) == sorted(ref), set(ours) ^ set(ref)
    for k in ref:
        assert math.isclose(ours[k], ref[k], abs_tol=TOL), f"{k}: ours {ours[k]} sklearn {ref[k]}"
    cm = M.confusion_matrix(M.predict_labels(torch.from_numpy(probs), threshold), torch.from_numpy(y), len(names))
    pred = (probs[:, 1] >= threshold).astype(int) if threshold is not None else probs.argmax(1)
    np.testing.assert_array_equal(cm.numpy(), confusion_matrix(y, pred, labels=list(range(len(names)))))
    return ours


def _random(n: int, c: int, seed: int, sharp: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    y = g.integers(0, c, n)
    z = g.normal(size=(n, c)) * sharp
    z[np.arange(n), y] += 1.5  # informative but imperfect
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


@pytest.mark.parametrize("c,seed", [(4, 0), (7, 1), (3, 2), (2, 3), (2, 4)])
def test_random_predictions_match_sklearn(c, seed):
    probs, y = _random(300, c, seed)
    ours = _compare(probs, y)
    assert 0 < ours["ece"] < 1 and ours["mce"] >= ours["ece"]


@pytest.mark.parametrize("threshold", [0.5, 0.2, 0.73])
def test_binary_threshold_matches_sklearn(threshold):
    probs, y = _random(250, 2, 5)
    ours = _compare(probs, y, threshold)
    assert ours["threshold"] == threshold
    # a low threshold calls more positives: higher sensitivity, lower specificity than a high one
    hi = M.classification_metrics(torch.from_numpy(probs), torch.from_numpy(y), ["a", "b"], threshold=0.9)
    if threshold < 0.9:
        assert ours["sensitivity"] >= hi["sensitivity"] and ours["specificity"] <= hi["specificity"]


def test_class_absent_from_targets_matches_sklearn():
    probs, y = _random(200, 4, 6)
    y[y == 2] = 0  # class 2 never occurs in the test split (but is still predicted sometimes)
    ours = _compare(probs, y)
    assert "per_class/c2/auroc" not in ours and ours["per_class/c2/support"] == 0


def test_binary_single_class_targets():
    probs, y = _random(100, 2, 7)
    y[:] = 1
    ours = _compare(probs, y, threshold=0.5)
    assert "auroc" not in ours and "specificity" not in ours and "sensitivity" in ours


def test_perfect_predictions():
    y = np.repeat(np.arange(3), 20)
    probs = np.eye(3)[y]  # confidences exactly 1: the top bin of the calibration error
    ours = _compare(probs, y)
    assert ours["accuracy"] == 1 and ours["auroc"] == 1 and ours["ece"] < 1e-12 and ours["brier"] == 0
    probs2 = np.eye(2)[y % 2]
    _compare(probs2, y % 2, threshold=0.5)


def test_all_predictions_one_class():
    g = np.random.default_rng(8)
    y = g.integers(0, 4, 120)
    probs = np.tile([0.7, 0.1, 0.1, 0.1], (120, 1))  # every image called class 0, identical scores
    ours = _compare(probs, y)
    assert ours["auroc"] == 0.5 and ours["per_class/c1/precision"] == 0
    _compare(np.tile([0.2, 0.8], (50, 1)), g.integers(0, 2, 50), threshold=0.5)


def test_confidences_on_bin_edges_match_sklearn():
    edges = np.array([0.2, 0.4, 0.6, 0.8, 1.0, 0.0])  # k/15 for k = 3, 6, 9, 12, 15, 0
    p1 = np.resize(edges, 60)
    y = np.random.default_rng(9).integers(0, 2, 60)
    _compare(np.stack([1 - p1, p1], 1), y, threshold=0.5)


def test_wrong_inputs_are_named():
    with pytest.raises(ValueError, match="3 classes"):
        M.classification_metrics(torch.rand(5, 2), torch.zeros(5, dtype=torch.long), ["a", "b", "c"])
    with pytest.raises(ValueError, match="class indices"):
        M.classification_metrics(torch.rand(5, 2), torch.full((5,), 4), ["a", "b"])
    with pytest.raises(ValueError, match="empty"):
        M.classification_metrics(torch.rand(0, 2), torch.zeros(0, dtype=torch.long), ["a", "b"])
