"""Bootstrap confidence intervals of the headline metrics: resample the images, recompute, take percentiles.

Resampling is stratified by class: each resample draws, for every class, as many images of that class as the
split has (with replacement), so a rare class is in every resample and no metric becomes undefined in one.
The interval at level L is the (1-L)/2 and (1+L)/2 percentile of the resampled values (numpy's linear
interpolation). The resamples are seeded (``numpy.random.default_rng(seed)``): the same seed gives the same
intervals. All resamples are scored together from per-image arrays (``weighted_metrics``), in chunks that
keep memory bounded: 1000 resamples of 3000 images take about a second.

Note on ECE: the binned ECE is biased upwards on small samples, and resampling (which duplicates images)
adds to that, so its interval can sit above the point estimate; read it as the spread, not as a correction.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from medimg.evaluation.calibration import Calibration
from medimg.evaluation.weighted_metrics import resampled_metrics

log = logging.getLogger(__name__)

# metrics that get an interval, in report order
INTERVAL_METRICS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "pr_auc", "ece", "nll", "brier",
                    "sensitivity", "specificity")
OPERATING = ("sensitivity", "specificity")  # reported once, at the operating threshold, without a suffix
CHUNK_CELLS = 4_000_000  # resamples x images scored at once (float64: ~32 MB per array)


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


def _chunks(targets: np.ndarray, resamples: int, seed: int) -> Iterator[np.ndarray]:
    rng = np.random.default_rng(seed)
    step = max(1, CHUNK_CELLS // max(1, len(targets)))
    for start in range(0, resamples, step):
        yield stratified_counts(targets, min(step, resamples - start), rng)


def resample_distribution(probs: np.ndarray, targets: np.ndarray, resamples: int, seed: int,
                          threshold: float | None = None) -> dict[str, np.ndarray]:
    """Each metric's value in each of ``resamples`` stratified resamples: ``{name: (resamples,)}``."""
    parts: dict[str, list[np.ndarray]] = {}
    for counts in _chunks(targets, resamples, seed):
        for name, values in resampled_metrics(counts, probs, targets, threshold).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def percentile_interval(values: np.ndarray, level: float, name: str = "metric") -> tuple[float, float] | None:
    """The percentile interval of the finite ``values``; None when there are none. Undefined values (NaN)
    are skipped, with a warning that says how many."""
    finite = values[np.isfinite(values)]
    if len(finite) < len(values):
        log.warning("bootstrap: %s is undefined in %d of %d resamples; its interval uses the other %d",
                    name, len(values) - len(finite), len(values), len(finite))
    if len(finite) == 0:
        return None
    lo, hi = np.percentile(finite, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def bootstrap_intervals(probs: torch.Tensor | np.ndarray, targets: torch.Tensor | np.ndarray, resamples: int,
                        level: float, seed: int, threshold: float | None = None) -> dict[str, tuple[float, float]]:
    """``{metric: (low, high)}`` for ``INTERVAL_METRICS`` (those defined for this task and split)."""
    p = np.asarray(probs.detach().double().cpu() if isinstance(probs, torch.Tensor) else probs, np.float64)
    y = np.asarray(targets.detach().cpu() if isinstance(targets, torch.Tensor) else targets, np.int64)
    dist = resample_distribution(p, y, resamples, seed, threshold)
    out = {}
    for name in INTERVAL_METRICS:
        if name in dist and (ci := percentile_interval(dist[name], level, name)) is not None:
            out[name] = ci
    return out


def interval_metrics(raw: torch.Tensor, final: torch.Tensor, targets: torch.Tensor,
                     calibration: Calibration, settings: dict[str, Any],
                     prefix: str = "test/") -> dict[str, float]:
    """The ``metrics.json`` entries: ``<prefix><metric>_ci_low`` / ``_ci_high`` for the uncalibrated
    probabilities, ``<prefix><metric>_calibrated_ci_low`` / ``_ci_high`` for the calibrated ones, and the
    operating point's sensitivity/specificity unsuffixed. ``settings``: ``bootstrap_resamples``,
    ``interval_level``, ``bootstrap_seed``. The same resamples serve both probability sets."""
    resamples, level, seed = (int(settings["bootstrap_resamples"]), float(settings["interval_level"]),
                              int(settings["bootstrap_seed"]))
    if resamples <= 0:
        return {}
    out: dict[str, float] = {}
    for name, (lo, hi) in bootstrap_intervals(raw, targets, resamples, level, seed).items():
        out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = lo, hi
    calibrated = calibration.is_calibrated
    if calibrated or calibration.threshold is not None:
        for name, (lo, hi) in bootstrap_intervals(final, targets, resamples, level, seed,
                                                  calibration.threshold).items():
            if name in OPERATING:
                out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = lo, hi
            elif calibrated:
                out[f"{prefix}{name}_calibrated_ci_low"], out[f"{prefix}{name}_calibrated_ci_high"] = lo, hi
    return out
