"""RAPS's two settings from data, when not given: ``k_reg`` and the penalty (lambda), tuned on a held-out part.

As MAPIE (``RAPSConformityScore``, ``size_raps=0.2``) and Angelopoulos et al. (2021): a seeded, stratified
``fraction`` of the calibration images is set aside; ``k_reg`` is the conformal quantile of the true labels'
ranks there (1: the most probable label), and the penalty the value of ``PENALTIES`` whose sets, fitted and
measured on that part, are smallest on average (the smaller value on a tie). The threshold is then fitted on
the other images only, so the tuning does not bias the coverage. (MAPIE's own search measures the sizes with
``k_reg`` replaced by the penalty, ``RAPSConformityScore._add_regularization``; here it uses ``k_reg``.)
"""

from __future__ import annotations

import numpy as np
import torch

from medimg.errors import ConfigError
from medimg.evaluation.conformal.scores import (
    TOLERANCE,
    conformal_quantile,
    label_scores,
    needed_images,
    true_ranks,
    true_scores,
)

PENALTIES = (0.001, 0.01, 0.1, 0.2, 0.5)  # the grid of the RAPS paper, as MAPIE


def held_out(targets: torch.Tensor, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(tune, rest)`` image indices: ``round(fraction * n_k)`` of each class ``k`` to tune, seeded."""
    if not 0 < fraction < 1:
        raise ConfigError(f"the RAPS tuning fraction must be in (0, 1), got {fraction}")
    y = targets.cpu().numpy()
    rng = np.random.default_rng([seed, 2])
    tune = [rng.permutation(m)[: round(fraction * len(m))] for k in np.unique(y) if len(m := np.flatnonzero(y == k))]
    tune_idx = np.sort(np.concatenate(tune))
    return tune_idx, np.setdiff1d(np.arange(len(y)), tune_idx)


def tune_raps(probs: torch.Tensor, targets: torch.Tensor, alpha: float, penalty: float | None,
              k_reg: int | None, fraction: float, seed: int) -> tuple[float, int, np.ndarray, int]:
    """``(penalty, k_reg, rest, tuned_on)``: the settings (the given ones kept), the indices left for the
    threshold and how many images tuned them."""
    tune, rest = held_out(targets, fraction, seed)
    need = needed_images(alpha)
    if min(len(tune), len(rest)) < need:
        raise ConfigError(f"tuning RAPS at alpha {alpha} needs at least {need} calibration images in each of its "
                          f"two parts, but {len(targets)} images split into {len(tune)} to tune and {len(rest)} for "
                          f"the threshold; give conformal penalty and k_reg, use more images or a larger alpha")
    p, y = probs[tune], targets[tune]
    if k_reg is None:
        k_reg = int(conformal_quantile(true_ranks(p, y).double(), alpha))
    if penalty is None:
        sizes = []
        for lam in PENALTIES:
            q = conformal_quantile(true_scores(p, y, "raps", lam, k_reg), alpha)
            sizes.append(float((label_scores(p, "raps", lam, k_reg) <= q + TOLERANCE).sum(1).double().mean()))
        penalty = PENALTIES[int(np.argmin(sizes))]
    return float(penalty), int(k_reg), rest, len(tune)
