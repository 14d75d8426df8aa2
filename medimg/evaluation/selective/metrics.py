"""Selective prediction on a test split: AURC and E-AURC, and with a referral rule the share of images referred
and the accuracy of the rest, each with a bootstrap interval. ``metrics.json`` keys (``<prefix>``, e.g.
``test/``)::

    <prefix>selective_aurc, <prefix>selective_e_aurc (+ _ci_low, _ci_high)
    <prefix>referred_share, <prefix>accuracy_not_referred (+ _ci_low, _ci_high)   with a rule
    <prefix>referral_threshold, <prefix>referral_target                             with a rule

``accuracy_not_referred`` is left out when every image is referred (it is undefined). The intervals resample
the images stratified by class (``bootstrap.resample_counts``: each class keeps its size) and are BCa intervals
(``bootstrap.bca_interval``), the acceleration from the grouped jackknife (``bootstrap.jackknife_counts``); an
interval that misses its value (BCa can, for a biased statistic such as AURC on a small split) is widened to it.
A resample in which every image is referred has no accuracy of the rest and is left out of that interval.
"""

from __future__ import annotations

import logging

import numpy as np

from medimg.evaluation.bootstrap import (
    BCA,
    Interval,
    acceleration,
    bca_interval,
    jackknife_counts,
    resample_counts,
)
from medimg.evaluation.selective.curve import weighted_aurc
from medimg.evaluation.selective.rule import ReferralRule

log = logging.getLogger(__name__)
AURC, E_AURC, REFERRED, ACCURACY = "selective_aurc", "selective_e_aurc", "referred_share", "accuracy_not_referred"


def weighted_values(counts: np.ndarray, conf: np.ndarray, wrong: np.ndarray,
                    referred: np.ndarray | None) -> dict[str, np.ndarray]:
    """Each metric of each row of ``counts`` ``(R, N)`` (how often each image counts)."""
    curve = weighted_aurc(counts, conf, wrong)
    out = {AURC: curve["aurc"], E_AURC: curve["e_aurc"]}
    if referred is not None:
        kept = ~np.asarray(referred, bool)
        total, n_kept = counts.sum(1), counts @ kept
        with np.errstate(invalid="ignore", divide="ignore"):
            out[REFERRED] = 1 - n_kept / total
            out[ACCURACY] = np.where(n_kept > 0, counts @ (kept & ~np.asarray(wrong, bool)) / n_kept, np.nan)
    return out


def _collect(chunks, conf, wrong, referred) -> dict[str, np.ndarray]:
    parts: dict[str, list[np.ndarray]] = {}
    for counts in chunks:
        for name, values in weighted_values(counts, conf, wrong, referred).items():
            parts.setdefault(name, []).append(values)
    return {name: np.concatenate(v) for name, v in parts.items()}


def selective_table(conf: np.ndarray, wrong: np.ndarray, targets: np.ndarray, referred: np.ndarray | None = None,
                    resamples: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, Interval]:
    """``{name: Interval}`` of the module doc's metrics that are defined; ``resamples`` 0: the values only."""
    conf, wrong = np.asarray(conf, np.float64), np.asarray(wrong, bool)
    y = np.asarray(targets, np.int64)
    point = {k: float(v[0]) for k, v in weighted_values(np.ones((1, len(y))), conf, wrong, referred).items()}
    point = {k: v for k, v in point.items() if np.isfinite(v)}
    if resamples <= 0:
        return {k: Interval(v, v, v, BCA) for k, v in point.items()}
    dist = _collect(resample_counts(y, resamples, seed), conf, wrong, referred)
    jack = _collect(jackknife_counts(y, seed), conf, wrong, referred)
    out = {}
    for name, estimate in point.items():
        values = dist[name][np.isfinite(dist[name])]
        if len(values) < len(dist[name]):
            log.warning("bootstrap: %s is undefined in %d of %d resamples (every image referred); its interval "
                        "uses the other %d", name, len(dist[name]) - len(values), len(dist[name]), len(values))
        if not len(values):
            continue
        lo, hi = bca_interval(values, estimate, acceleration(jack[name]), level)
        out[name] = Interval(estimate, min(lo, estimate), max(hi, estimate), BCA)
    return out


def selective_metrics(conf: np.ndarray, wrong: np.ndarray, targets: np.ndarray, rule: ReferralRule | None = None,
                      resamples: int = 1000, level: float = 0.95, seed: int = 0,
                      prefix: str = "test/") -> dict[str, float]:
    """The ``metrics.json`` entries of the module doc (``resamples`` 0: without intervals)."""
    referred = rule.refer(conf) if rule is not None else None
    out: dict[str, float] = {}
    for name, iv in selective_table(conf, wrong, targets, referred, resamples, level, seed).items():
        out[prefix + name] = iv.estimate
        if resamples > 0:
            out[f"{prefix}{name}_ci_low"], out[f"{prefix}{name}_ci_high"] = iv.low, iv.high
    if rule is not None:
        out[f"{prefix}referral_threshold"], out[f"{prefix}referral_target"] = rule.threshold, rule.target
    return out
