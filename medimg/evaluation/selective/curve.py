"""The risk-coverage curve of a classifier that may abstain, and its area (AURC; Geifman et al. 2018).

Each image's **confidence** is the final (calibrated) probability of the class decided for it (``confidences``).
For a binary model with an operating threshold the decided class need not be the more probable one: at
threshold 0.3, P(positive) = 0.35 is decided positive with confidence 0.35, since under calibration that is the
chance the decision is right. Ranking images by it is ranking them by their chance of being right, which is what
the accuracy of the images kept depends on.

Keeping the ``k`` most confident of ``N`` images gives the coverage ``k / N`` and the risk ``1 - accuracy`` of
those ``k``. Images of equal confidence cannot be told apart, so a tie group counts at its mean error rate at
every place in it (the expected risk over the orders it could take): the curve does not depend on how a sort
breaks ties. ``AURC`` is the mean risk over ``k = 1 .. N``; ``E-AURC`` is AURC less the AURC of a ranking that
puts every correct image first (the same errors, ranked perfectly): the part of AURC due to the ranking, not to
the errors themselves. Both are computed for images that count with weights (the bootstrap's resamples:
an image drawn twice is two images of equal confidence, a tie) in one pass over the groups of equal confidence,
with harmonic numbers for the sums of ``1 / k`` inside a group.
"""

from __future__ import annotations

import numpy as np
import torch


def confidences(probs: torch.Tensor | np.ndarray, decisions: torch.Tensor | np.ndarray) -> np.ndarray:
    """``(N,)`` float64: the probability in ``probs`` ``(N, C)`` of each image's decided class."""
    p = np.asarray(probs.detach().double().cpu() if isinstance(probs, torch.Tensor) else probs, np.float64)
    d = np.asarray(decisions.detach().cpu() if isinstance(decisions, torch.Tensor) else decisions, np.int64)
    if p.ndim != 2 or d.shape != (len(p),):
        raise ValueError(f"probabilities (N, C) and N decisions needed, got {p.shape} and {d.shape}")
    return p[np.arange(len(p)), d]


def tie_groups(conf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts ``conf`` from the most confident down (stable) and where each group of equal
    confidence starts in it."""
    order = np.argsort(-np.asarray(conf, np.float64), kind="stable")
    ranked = np.asarray(conf, np.float64)[order]
    starts = np.concatenate([[0], np.flatnonzero(np.diff(ranked) != 0) + 1]) if len(ranked) else np.zeros(0, int)
    return order, starts


def _harmonic(n: int) -> np.ndarray:
    """``H[0..n]``: ``H[k] = 1 + 1/2 + ... + 1/k``."""
    return np.concatenate([[0.0], np.cumsum(1.0 / np.arange(1, n + 1))])


def weighted_aurc(counts: np.ndarray, conf: np.ndarray, wrong: np.ndarray) -> dict[str, np.ndarray]:
    """``{"aurc", "e_aurc"}``, each ``(R,)``: the AURC and E-AURC of each row of ``counts`` ``(R, N)`` (how often
    each image counts: whole numbers) for images of confidence ``conf`` whose decision is ``wrong`` (``(N,)``)."""
    counts = np.rint(np.atleast_2d(counts)).astype(np.int64)
    order, starts = tie_groups(conf)
    c, w = counts[:, order], np.asarray(wrong, bool)[order]
    size = np.add.reduceat(c, starts, axis=1) if len(starts) else np.zeros((len(c), 0), np.int64)
    errors = np.add.reduceat(c * w, starts, axis=1) if len(starts) else size
    before, errors_before = np.cumsum(size, 1) - size, np.cumsum(errors, 1) - errors
    rate = np.divide(errors, size, out=np.zeros(size.shape), where=size > 0)
    h = _harmonic(int(counts.sum(1).max(initial=0)))
    # the k-th kept image of a group that starts after `before` images: errors_before + j * rate errors in k
    area = errors + (errors_before - rate * before) * (h[before + size] - h[before])
    total, wrong_total = size.sum(1), errors.sum(1)
    right = total - wrong_total
    best = wrong_total - right * (h[total] - h[right])  # every correct image first
    with np.errstate(invalid="ignore", divide="ignore"):
        aurc = np.where(total > 0, area.sum(1) / total, np.nan)
        return {"aurc": aurc, "e_aurc": aurc - np.where(total > 0, best / total, np.nan)}


def aurc(conf: np.ndarray, wrong: np.ndarray) -> tuple[float, float]:
    """AURC and E-AURC of the images (each once)."""
    out = weighted_aurc(np.ones((1, len(conf))), conf, wrong)
    return float(out["aurc"][0]), float(out["e_aurc"][0])


def risk_coverage(conf: np.ndarray, wrong: np.ndarray) -> dict[str, np.ndarray]:
    """The curve, one point per ``k = 1 .. N``: ``coverage`` ``k / N``, ``risk`` of the ``k`` most confident (a
    tie group at its mean error rate), ``confidence`` of the ``k``-th, and ``optimal``: the risk had every
    correct image been ranked first."""
    n = len(conf)
    order, starts = tie_groups(conf)
    w = np.asarray(wrong, np.float64)[order]
    ends = np.append(starts[1:], n)
    size = ends - starts
    errors_before = np.concatenate([[0.0], np.cumsum(np.add.reduceat(w, starts))[:-1]]) if n else np.zeros(0)
    rate = np.add.reduceat(w, starts) / size if n else np.zeros(0)
    group = np.repeat(np.arange(len(starts)), size)
    k = np.arange(1, n + 1)
    expected = errors_before[group] + (k - starts[group]) * rate[group]
    right = n - int(w.sum())
    return {"coverage": k / max(n, 1), "risk": expected / k, "confidence": np.asarray(conf, np.float64)[order],
            "optimal": np.maximum(k - right, 0) / k}
