"""Bootstrap confidence intervals of the headline metrics: resample the images, recompute, and read off each
metric an interval that contains the value it goes with.

Resampling is stratified by class: each resample draws, for every class, as many images of that class as the
split has (with replacement), so a rare class is in every resample and no metric becomes undefined in one.
The resamples are seeded (``numpy.random.default_rng(seed)``): the same seed gives the same intervals. All
resamples are scored together from per-image arrays (``weighted_metrics``), in chunks that keep memory bounded:
1000 resamples of 3000 images take one to three seconds.

Intervals at level L (``Interval``: estimate, low, high, method):

* ``bca`` (bias-corrected and accelerated, Efron 1987), every metric but ECE: the resampled values' percentiles
  (numpy's linear interpolation) at Phi(z0 + (z0 + z) / (1 - a (z0 + z))) for z = Phi^-1((1 -+ L) / 2). z0 =
  Phi^-1(share of resamples below the estimate, ties counted half) corrects for the median bias; the acceleration
  a = sum(d^3) / (6 sum(d^2)^1.5) for the skew, d the deviations of the jackknife values (the metric with one
  group of images left out, ``JACKKNIFE_GROUPS`` groups stratified by class: one image each on smaller splits)
  from their mean. For an unbiased, unskewed metric (accuracy, NLL and Brier are means) z0 and a are near 0 and
  BCa is the percentile interval. The jackknife (300 groups) adds about a quarter to 1000 resamples.
* ``basic`` of the bias-corrected value, for ECE: the binned ECE is biased upwards (noise inflates every bin's
  |gap|) and the ECE of a resample, which repeats images, more so. On 600 well-calibrated images every percentile
  of the resampled ECEs can lie above the estimate, and an interval that corrects for that bias (BCa, basic) then
  lies wholly below it: no honest interval contains the plug-in ECE. So ECE is reported bias-corrected, as
  ``ece_debiased`` = 2 ECE - median resampled ECE, with the basic interval [2 ECE - q_high, 2 ECE - q_low],
  clipped to the metric's range; the median lies between the percentiles, so the interval contains its value.
  A metric whose BCa interval misses its estimate on a split (its bias there exceeds its spread) is reported the
  same way, with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from statistics import NormalDist
from typing import Any, NamedTuple

import numpy as np
import torch

from medimg.evaluation.calibration import Calibration
from medimg.evaluation.weighted_metrics import resampled_metrics

log = logging.getLogger(__name__)

# metrics that get an interval, in report order
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "pr_auc", "ece", "nll", "brier",
                    "sensitivity", "specificity")
OPERATING = ("sensitivity", "specificity")  # reported once, at the operating threshold, without a suffix
BIASED = ("ece",)  # always reported bias-corrected, with the basic interval
DEBIASED = "_debiased"  # suffix of a bias-corrected value: <metric>_debiased, <metric>_debiased_ci_low, ...
RANGES = {"nll": (0.0, float("inf")), "brier": (0.0, 2.0)}  # the others lie in [0, 1]
BCA, BASIC = "bca", "basic"
CHUNK_CELLS = 4_000_000  # resamples x images scored at once (float64: ~32 MB per array)
JACKKNIFE_GROUPS = 300  # leave-one-group-out values for the BCa acceleration
_NORMAL = NormalDist()


class Interval(NamedTuple):
    estimate: float  # the value the interval goes with: the metric, or for ``basic`` its bias-corrected value
    low: float
    high: float
    method: str  # ``bca`` or ``basic``


def stratified_counts(targets: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """``(resamples, N)``: how often each image is drawn, class by class (each class keeps its size)."""
    n = len(targets)
    flat = np.zeros(resamples * n, dtype=np.int64)
    offsets = np.arange(resamples)[:, None] * n
    for k in np.unique(targets):
        members = np.flatnonzero(targets == k)
        draws = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        flat += np.bincount((offsets + draws).ravel(), minlength=resamples * n)
    return flat.reshape(resamples, n).astype(np.float64)


def resample_counts(targets: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """The stratified resamples of ``stratified_counts`` from ``numpy.random.default_rng(seed)``, in chunks of rows
    that keep memory bounded: ``(resamples, N)`` in all."""
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_CELLS // max(1, len(targets)))
    for start in range(0, resamples, step):
        yield stratified_counts(targets, min(step, resamples - start), rng)


def resample_distribution(probs: np.ndarray, targets: np.ndarray, resamples: int, seed: int,
                          threshold: float | None = None) -> dict[str, np.ndarray]:
    """Each metric's value in each of ``resamples`` stratified resamples: ``{name: (resamples,)}``."""
    parts: dict[str, list[np.ndarray]] = {}
    for counts in resample_counts(targets, resamples, seed):
        for name, values in resampled_metrics(counts, probs, targets, threshold).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def jackknife_counts(targets: np.ndarray, seed: int) -> Iterator[np.ndarray]:
    """The jackknife's weights, in chunks of rows: ``(groups, N)`` in all, row g with the g-th of
    ``min(N, JACKKNIFE_GROUPS)`` groups of images left out (0) and every other image once (1). The groups take
    the images of each class in a seeded random order, in turn (every group has each class's share); the stream
    is not the resamples' (the same seed draws the same resamples as without it)."""
    n = len(targets)
    groups = min(n, JACKKNIFE_GROUPS)
    rng = np.random.default_rng([seed, 1])
    order = np.concatenate([rng.permutation(np.flatnonzero(targets == k)) for k in np.unique(targets)])
    group = np.empty(n, np.int64)
    group[order] = np.arange(n) % groups
    step = max(1, CHUNK_CELLS // max(1, n))
    for start in range(0, groups, step):
        left_out = np.arange(start, min(groups, start + step))
        yield (group[None, :] != left_out[:, None]).astype(np.float64)


def jackknife_values(probs: np.ndarray, targets: np.ndarray, seed: int,
                     threshold: float | None = None) -> dict[str, np.ndarray]:
    """Each metric with one of ``min(N, JACKKNIFE_GROUPS)`` groups of images left out: ``{name: (groups,)}``
    (``jackknife_counts``)."""
    parts: dict[str, list[np.ndarray]] = {}
    for counts in jackknife_counts(targets, seed):
        for name, values in resampled_metrics(counts, probs, targets, threshold).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def acceleration(jackknife: np.ndarray) -> float:
    """BCa's acceleration from jackknife values (undefined ones skipped): 0 when they do not vary."""
    v = jackknife[np.isfinite(jackknife)]
    d = v.mean() - v if len(v) else v
    spread = float((d ** 2).sum())
    return float((d ** 3).sum() / (6 * spread ** 1.5)) if spread > 0 else 0.0


def _finite(values: np.ndarray, name: str) -> np.ndarray:
    finite = values[np.isfinite(values)]
    if len(finite) < len(values):
        log.warning("bootstrap: %s is undefined in %d of %d resamples; its interval uses the other %d",
                    name, len(values) - len(finite), len(values), len(finite))
    return finite


def percentile_interval(values: np.ndarray, level: float, name: str = "metric") -> tuple[float, float] | None:
    """The percentile interval of the finite ``values``; None when there are none. Undefined values (NaN)
    are skipped, with a warning that says how many."""
    finite = _finite(values, name)
    if len(finite) == 0:
        return None
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bca_interval(values: np.ndarray, estimate: float, accel: float, level: float) -> tuple[float, float]:
    """The BCa interval of the (finite) resampled ``values`` of a metric whose value is ``estimate``."""
    b = len(values)
    share = (np.sum(values < estimate) + 0.5 * np.sum(values == estimate)) / b
    z0 = _NORMAL.inv_cdf(min(max(float(share), 0.5 / b), 1 - 0.5 / b))
    levels = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        z = z0 + _NORMAL.inv_cdf(q)
        denom = 1 - accel * z
        levels.append(_NORMAL.cdf(z0 + z / denom) if denom > 0 else float(q > 0.5))
    lo, hi = np.percentile(values, [100 * levels[0], 100 * levels[1]])
    return float(lo), float(hi)


def basic_interval(values: np.ndarray, estimate: float, level: float, name: str) -> Interval:
    """The bias-corrected value (2 estimate - median) and its basic interval, clipped to the metric's range."""
    lo_q, median, hi_q = np.percentile(values, [50 * (1 - level), 50, 50 * (1 + level)])
    low, high = RANGES.get(name, (0.0, 1.0))

    def clip(v: float) -> float:
        return float(min(max(v, low), high))

    return Interval(clip(2 * estimate - median), clip(2 * estimate - hi_q), clip(2 * estimate - lo_q), BASIC)


def _arrays(probs, targets) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(probs.detach().double().cpu() if isinstance(probs, torch.Tensor) else probs, np.float64)
    y = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets, np.int64)
    return p, y


def interval_table(probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, resamples: int,
                   level: float, seed: int, threshold: float | None = None) -> dict[str, Interval]:
    """``{name: Interval}`` for ``INTERVAL_METRICS`` defined on this task and split: ``<metric>`` for a BCa
    interval of the metric, ``<metric>_debiased`` for a bias-corrected value with its basic interval (ECE
    always; another metric when its BCa interval misses it, with a warning). Each contains its estimate."""
    p, y = _arrays(probs, targets)
    dist = resample_distribution(p, y, resamples, seed, threshold)
    point = {k: float(v[0]) for k, v in resampled_metrics(np.ones((1, len(y))), p, y, threshold).items()}
    jack = jackknife_values(p, y, seed, threshold)
    out: dict[str, Interval] = {}
    for name in INTERVAL_METRICS:
        if name not in dist or not np.isfinite(point[name]) or len(values := _finite(dist[name], name)) == 0:
            continue
        if name not in BIASED:
            lo, hi = bca_interval(values, point[name], acceleration(jack[name]), level)
            if lo - (tol := 1e-9 * max(1.0, abs(point[name]))) <= point[name] <= hi + tol:  # tol: rounding
                out[name] = Interval(point[name], min(lo, point[name]), max(hi, point[name]), BCA)
                continue
            log.warning("bootstrap: the BCa interval of %s, [%.4f, %.4f], misses its value %.4f (its bias exceeds "
                        "its spread on this split): reported bias-corrected, as %s%s", name, lo, hi, point[name],
                        name, DEBIASED)
        out[name + DEBIASED] = basic_interval(values, point[name], level, name)
    return out


def bootstrap_intervals(probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, resamples: int,
                        level: float, seed: int, threshold: float | None = None) -> dict[str, tuple[float, float]]:
    """``{metric: (low, high)}``: the BCa intervals of ``interval_table``, each containing the metric's own value
    (so not ECE, which has its bias-corrected value's interval there)."""
    table = interval_table(probs, targets, resamples, level, seed, threshold)
    return {name: (iv.low, iv.high) for name, iv in table.items() if iv.method == BCA}


def _entries(table: dict[str, Interval], prefix: str, suffix: str) -> dict[str, float]:
    """``metrics.json`` keys of ``table``: ``<prefix><metric><suffix>_ci_low`` / ``_ci_high`` and, for a
    bias-corrected value, ``<prefix><metric><suffix>_debiased`` with its ``_ci_low`` / ``_ci_high``."""
    out: dict[str, float] = {}
    for name, iv in table.items():
        base = name.removesuffix(DEBIASED)
        key = f"{prefix}{base}{'' if base in OPERATING else suffix}{DEBIASED if iv.method == BASIC else ''}"
        if iv.method == BASIC:
            out[key] = iv.estimate
        out[f"{key}_ci_low"], out[f"{key}_ci_high"] = iv.low, iv.high
    return out


def interval_metrics(raw: torch.Tensor, final: torch.Tensor, targets: torch.Tensor,
                     calibration: Calibration, settings: dict[str, Any],
                     prefix: str = "test/") -> dict[str, float]:
    """The ``metrics.json`` entries: ``<prefix><metric>_ci_low`` / ``_ci_high`` for the uncalibrated
    probabilities, ``<prefix><metric>_calibrated_ci_low`` / ``_ci_high`` for the calibrated ones, and the
    operating point's sensitivity/specificity unsuffixed; a value reported bias-corrected (ECE) as
    ``<prefix>ece_debiased`` / ``<prefix>ece_calibrated_debiased``, each with its ``_ci_low`` / ``_ci_high``.
    ``settings``: ``bootstrap_resamples``, ``interval_level``, ``bootstrap_seed``. The same resamples serve
    both probability sets."""
    resamples, level, seed = (int(settings["bootstrap_resamples"]), float(settings["interval_level"]),
                              int(settings["bootstrap_seed"]))
    if resamples <= 0:
        return {}
    out = _entries(interval_table(raw, targets, resamples, level, seed), prefix, "")
    calibrated = calibration.is_calibrated
    if calibrated or calibration.threshold is not None:
        table = interval_table(final, targets, resamples, level, seed, calibration.threshold)
        kept = {k: iv for k, iv in table.items() if calibrated or k.removesuffix(DEBIASED) in OPERATING}
        out.update(_entries(kept, prefix, "_calibrated"))
    return out
