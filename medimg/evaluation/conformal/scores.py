"""Conformity scores and the split-conformal quantile: pure tensor functions, no state.

A score says how unusual label ``c`` is for an image (higher: less plausible); a prediction set holds every
label whose score is at most the threshold ``q`` (plus ``TOLERANCE``, so rounding never drops a label):

* ``lac`` (least ambiguous set-valued classifier, Sadinle et al. 2019): ``1 - p_c``.
* ``aps`` (adaptive prediction sets, Romano et al. 2020): the probability mass of the labels ranked strictly
  above ``c``. The set is then the labels in decreasing probability up to and including the one whose
  cumulative mass crosses ``q``: MAPIE's ``include_last_label=True``. (MAPIE calibrates that set with a
  randomised score; with its uniform draw at 1 the two scores are the same, see ``tests/test_conformal.py``.)
* ``raps`` (regularised APS, Angelopoulos et al. 2021): the APS score plus ``penalty * max(0, g - k_reg)``,
  ``g`` the number of labels ranked above ``c``: the penalised cumulative mass of the label before it, so the
  set is MAPIE's ``include_last_label=True`` set of RAPS's penalised cumulative masses.

Randomised APS/RAPS (``u`` in [0, 1) per image) interpolate each label's score between the deterministic one
(``u = 1``) and the label's own penalised cumulative mass (``u = 0``): ``inclusive - u * (inclusive - exclusive)``
(MAPIE's ``cumsum - u * p`` for APS, its ``include_last_label="randomized"``). Coverage is then exact in
expectation; sets may be empty. Labels of equal probability always get equal scores (ties enter together).

The threshold is the ``k``-th smallest calibration score, ``k = ceil((n + 1)(1 - alpha))``: the empirical
quantile at level ``k / n`` by the inverted CDF (numpy ``method="inverted_cdf"``; MAPIE's ``"lower"`` at that
level gives the same value, numpy's ``"higher"`` the ``(k + 1)``-th, one step more conservative). With
``n < 1 / alpha - 1`` calibration images ``k > n``: no finite threshold has the guarantee (``needed_images``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

SCORES = ("lac", "aps", "raps")
TOLERANCE = 1e-8  # MAPIE's EPSILON: a score this close above the threshold is inside it
_ROUNDING = 1e-9  # (n + 1)(1 - alpha) within this of an integer is that integer


def label_scores(probs: torch.Tensor, score: str, penalty: float = 0.0, k_reg: int = 0,
                 u: torch.Tensor | None = None) -> torch.Tensor:
    """``(N, C)`` float64 scores of every label of every image; ``u`` ``(N,)``: randomised APS/RAPS."""
    p = probs.double()
    if score == "lac":
        return 1.0 - p
    n, c = p.shape
    desc = p.sort(dim=1, descending=True).values
    mass = torch.cat([p.new_zeros(n, 1), desc.cumsum(dim=1)], dim=1)  # mass[:, g]: the top g labels' mass
    above = c - torch.searchsorted(desc.flip(1).contiguous(), p.contiguous(), right=True)  # labels ranked above
    exclusive = mass.gather(1, above) + penalty * (above - k_reg).clamp(min=0)
    if u is None:
        return exclusive
    inclusive = mass.gather(1, above) + p + penalty * (above + 1 - k_reg).clamp(min=0)
    return inclusive - u.to(p).reshape(-1, 1) * (inclusive - exclusive)


def true_scores(probs: torch.Tensor, targets: torch.Tensor, score: str, penalty: float = 0.0, k_reg: int = 0,
                u: torch.Tensor | None = None) -> torch.Tensor:
    """``(N,)`` float64: each image's score of its true label."""
    return label_scores(probs, score, penalty, k_reg, u).gather(1, targets.long().reshape(-1, 1)).squeeze(1)


def true_ranks(probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """``(N,)``: 1 + the number of labels more probable than the true one (RAPS's ``k_reg`` is a quantile)."""
    p = probs.double()
    return 1 + (p > p.gather(1, targets.long().reshape(-1, 1))).sum(dim=1)


def conformal_rank(n: int, alpha: float) -> int:
    """``ceil((n + 1)(1 - alpha))``: which order statistic of ``n`` calibration scores is the threshold."""
    return math.ceil((n + 1) * (1 - alpha) - _ROUNDING)


def needed_images(alpha: float) -> int:
    """The fewest calibration images that give a finite threshold at ``alpha`` (``1 / alpha - 1``, rounded up)."""
    n = max(1, math.ceil((1 - alpha) / alpha - _ROUNDING))
    while conformal_rank(n, alpha) > n:
        n += 1
    return n


def conformal_quantile(scores: torch.Tensor, alpha: float) -> float:
    """The ``ceil((n + 1)(1 - alpha))``-th smallest of ``scores``; the caller checks ``n >= needed_images``."""
    k = conformal_rank(len(scores), alpha)
    return float(scores.double().sort().values[k - 1])


def uniforms(seed: int, stream: int, n: int) -> torch.Tensor:
    """``n`` seeded draws from [0, 1) for randomised sets: stream 0 for the fit, 1 for the sets."""
    return torch.from_numpy(np.random.default_rng([seed, stream]).random(n))
