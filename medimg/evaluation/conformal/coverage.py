"""How conformal sets do on a test split: coverage (overall and per class) and mean set size, each with a
bootstrap interval, and both over a grid of ``alpha`` (the coverage/size-against-alpha figure, ``plots.py``).

The intervals resample the images stratified by class (``bootstrap.stratified_counts``: each class keeps its
size, so a rare class is in every resample) with ``numpy.random.default_rng(seed)``, and are BCa intervals
(``bootstrap.bca_interval``), the acceleration from the leave-one-image-out values (closed form for a mean).
Coverage and set size are means, so BCa is close to the percentile interval; each interval contains its value.
``metrics.json`` keys (``<prefix>``, e.g. ``test/``)::

    <prefix>conformal_coverage, <prefix>conformal_coverage_ci_low, <prefix>conformal_coverage_ci_high
    <prefix>conformal_set_size (+ _ci_low, _ci_high)
    <prefix>per_class/<class>/conformal_coverage (+ _ci_low, _ci_high), .../conformal_set_size (+ ...)
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import torch

from medimg.errors import ConfigError
from medimg.evaluation.bootstrap import (
    BCA,
    CHUNK_CELLS,
    Interval,
    acceleration,
    bca_interval,
    stratified_counts,
)
from medimg.evaluation.conformal.rule import Conformal, check_settings
from medimg.evaluation.conformal.scores import needed_images

log = logging.getLogger(__name__)
COVERAGE, SIZE = "conformal_coverage", "conformal_set_size"


def _loo_means(x: np.ndarray) -> np.ndarray:
    """The mean of ``x`` with each value left out in turn (the jackknife of a mean)."""
    return (x.sum() - x) / (len(x) - 1) if len(x) > 1 else x.astype(np.float64)


def _interval(values: np.ndarray, x: np.ndarray, level: float) -> Interval:
    estimate = float(x.mean())
    lo, hi = bca_interval(values, estimate, acceleration(_loo_means(x)), level)
    return Interval(estimate, min(lo, estimate), max(hi, estimate), BCA)


def set_table(sets: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], resamples: int = 1000,
              level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """``{name: Interval}`` for ``conformal_coverage``, ``conformal_set_size`` and ``per_class/<c>/...`` of
    each class in ``targets``; ``resamples`` 0: the values only (low = high = value)."""
    s, y = sets.detach().cpu().numpy().astype(bool), torch.as_tensor(targets).detach().cpu().numpy().astype(np.int64)
    if s.ndim != 2 or s.shape != (len(y), len(class_names)):
        raise ValueError(f"sets must be (N, C) = ({len(y)}, {len(class_names)}), got {s.shape}")
    covered, size = s[np.arange(len(y)), y].astype(np.float64), s.sum(1).astype(np.float64)
    groups = {"": np.arange(len(y))}
    groups.update({f"per_class/{class_names[k]}/": np.flatnonzero(y == k) for k in np.unique(y)})
    draws: dict[str, list[np.ndarray]] = {}
    rng, step = np.random.default_rng(seed), max(1, CHUNK_CELLS // max(1, len(y)))
    for start in range(0, max(resamples, 0), step):
        counts = stratified_counts(y, min(step, resamples - start), rng)
        for g, idx in groups.items():
            for name, x in ((COVERAGE, covered), (SIZE, size)):
                draws.setdefault(g + name, []).append(counts[:, idx] @ x[idx] / len(idx))
    out = {}
    for g, idx in groups.items():
        for name, x in ((COVERAGE, covered), (SIZE, size)):
            if resamples > 0:
                out[g + name] = _interval(np.concatenate(draws[g + name]), x[idx], level)
            else:
                out[g + name] = Interval(float(x[idx].mean()), float(x[idx].mean()), float(x[idx].mean()), BCA)
    return out


def set_metrics(sets: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str], resamples: int = 1000,
                level: float = 0.95, seed: int = 0, prefix: str = "test/") -> dict[str, float]:
    """The ``metrics.json`` entries of ``set_table`` (the module doc lists them)."""
    out: dict[str, float] = {}
    for name, iv in set_table(sets, targets, class_names, resamples, level, seed).items():
        out[prefix + name] = iv.estimate
        if resamples > 0:
            out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = iv.low, iv.high
    return out


def coverage_curve(cal_probs: torch.Tensor, cal_targets: torch.Tensor, test_probs: torch.Tensor,
                   test_targets: torch.Tensor, alphas: Sequence[float], score: str = "lac",
                   mondrian: bool = False, **fit_options) -> dict[str, list[float]]:
    """Coverage and mean set size on the test split of the rule fitted at each ``alpha``:
    ``{"alpha", "target" (1 - alpha), "coverage", "set_size", "worst_class_coverage"}``, one entry per alpha.
    An alpha that needs more calibration images than there are (of a class, for mondrian) is left out, with a
    warning; ``fit_options`` go to ``Conformal.fit``."""
    for a in alphas:
        check_settings(score, a)
    y_cal = torch.as_tensor(cal_targets).long()
    fewest = int(torch.bincount(y_cal).min()) if mondrian else len(y_cal)
    kept = sorted(float(a) for a in alphas if needed_images(a) <= fewest)
    if len(kept) < len(alphas):
        log.warning("conformal: alphas %s need more than %d calibration images%s and are left out of the curve",
                    sorted(set(map(float, alphas)) - set(kept)), fewest, " in a class" if mondrian else "")
    if not kept:
        raise ConfigError(f"no alpha in {list(alphas)} can be fitted on {fewest} calibration images; the smallest "
                          f"that can is {1 / (fewest + 1):.3g}")
    y = torch.as_tensor(test_targets).long()
    out: dict[str, list[float]] = {k: [] for k in ("alpha", "target", "coverage", "set_size",
                                                   "worst_class_coverage")}
    for a in kept:
        sets = Conformal.fit(cal_probs, y_cal, score, a, mondrian, **fit_options).sets(test_probs).cpu()
        covered = sets[torch.arange(len(y)), y].double()
        out["alpha"].append(a)
        out["target"].append(1 - a)
        out["coverage"].append(float(covered.mean()))
        out["set_size"].append(float(sets.sum(1).double().mean()))
        out["worst_class_coverage"].append(min(float(covered[y == k].mean()) for k in y.unique()))
    return out
