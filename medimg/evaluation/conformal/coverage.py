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
import math
from collections.abc import Mapping, Sequence

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
REFIT_HINT = ("refit the calibrator and the conformal and referral thresholds on a labelled part of these images: "
              "python -m medimg.evaluate ckpt_path=<ckpt> dataset=<their data set> recalibrate=true")
CURVE_ALPHAS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3)  # the coverage/size-against-alpha figure's grid


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


def coverage_curve(rule: Conformal, test_probs: torch.Tensor, test_targets: torch.Tensor,
                   alphas: Sequence[float] = CURVE_ALPHAS) -> dict[str, list[float]]:
    """Coverage and mean set size on the test split of ``rule`` refitted at each ``alpha`` from its stored
    calibration scores (``Conformal.at``): ``{"alpha", "target" (1 - alpha), "coverage", "set_size",
    "worst_class_coverage"}``, one entry per alpha. An alpha that needs more calibration images than there are
    (of a class, for mondrian) is left out, with a warning."""
    for a in alphas:
        check_settings(rule.score, a)
    if rule.calibration_labels is None:
        raise ConfigError("the conformal rule holds no calibration scores: no curve over alpha")
    y_cal = torch.tensor(rule.calibration_labels, dtype=torch.long)
    fewest = int(torch.bincount(y_cal).min()) if rule.mondrian else len(y_cal)
    kept = sorted(float(a) for a in alphas if needed_images(a) <= fewest)
    if len(kept) < len(alphas):
        log.info("conformal: alphas %s need more than %d calibration images%s and are left out of the curve",
                    sorted(set(map(float, alphas)) - set(kept)), fewest, " in a class" if rule.mondrian else "")
    if not kept:
        raise ConfigError(f"no alpha in {list(alphas)} can be fitted on {fewest} calibration images; the smallest "
                          f"that can is {1 / (fewest + 1):.3g}")
    y = torch.as_tensor(test_targets).long()
    out: dict[str, list[float]] = {k: [] for k in ("alpha", "target", "coverage", "set_size",
                                                   "worst_class_coverage")}
    for a in kept:
        sets = rule.at(a, test_probs.shape[1]).sets(test_probs).cpu()
        covered = sets[torch.arange(len(y)), y].double()
        out["alpha"].append(a)
        out["target"].append(1 - a)
        out["coverage"].append(float(covered.mean()))
        out["set_size"].append(float(sets.sum(1).double().mean()))
        out["worst_class_coverage"].append(min(float(covered[y == k].mean()) for k in y.unique()))
    return out


def coverage_warnings(metrics: Mapping[str, float], prefix: str, alpha: float, class_names: Sequence[str],
                      per_class: bool = False) -> list[str]:
    """A line for each prediction-set coverage clearly below its target ``1 - alpha``: its interval's upper end
    below the target, or without an interval the value more than two binomial standard errors below it.
    ``per_class`` (Mondrian sets, whose guarantee is per class): each class's coverage as well."""
    target = 1 - alpha
    groups: list[tuple[str | None, str]] = [(None, prefix)]
    if per_class:
        groups += [(c, f"{prefix}per_class/{c}/") for c in class_names]
    images = sum(v for k, v in metrics.items() if k.startswith(f"{prefix}per_class/") and k.endswith("/support"))
    out = []
    for cls, at in groups:
        key = f"{at}conformal_coverage"
        value, low, high = (_number(metrics, k) for k in (key, f"{key}_ci_low", f"{key}_ci_high"))
        if value is None:
            continue
        n = _number(metrics, f"{at}support") if cls else images
        if high is not None:
            below, shown = high < target, f"{value:.3f} [{low:.3f}, {high:.3f}]"
        else:
            below, shown = bool(n) and value < target - 2 * math.sqrt(target * (1 - target) / n), f"{value:.3f}"
        if below:
            of = f" of {cls}" if cls else ""
            out.append(f"prediction-set coverage{of} {shown} on the {prefix.rstrip('/')} split is below its target "
                       f"{target:g}: the sets do not hold their guarantee on these images; {REFIT_HINT}")
    return out


def _number(metrics: Mapping[str, float], key: str) -> float | None:
    v = metrics.get(key)
    return float(v) if isinstance(v, int | float) and math.isfinite(v) else None
