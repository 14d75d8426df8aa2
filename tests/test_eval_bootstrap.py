"""Bootstrap intervals: the vectorised metrics equal metrics.py on the full sample, intervals contain the point
estimate and narrow as the split grows, stratified resamples keep every class, seeded, fast."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest
import torch

from medimg.evaluation.bootstrap import (
    INTERVAL_METRICS,
    bootstrap_intervals,
    interval_metrics,
    percentile_interval,
    stratified_counts,
)
from medimg.evaluation.calibration import Temperature, Uncalibrated
from medimg.evaluation.metrics import classification_metrics
from medimg.evaluation.weighted_metrics import resampled_metrics

SETTINGS = {"bootstrap_resamples": 300, "interval_level": 0.95, "bootstrap_seed": 0}


def _predictions(n: int, c: int, seed: int, ties: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, c, (n,), generator=g)
    z = torch.randn(n, c, generator=g) * 1.5 + torch.nn.functional.one_hot(y, c) * 1.2
    if ties:
        z[: n // 10] = z[: n // 10].round()  # repeated scores: ties in the rankings
    return z.double().softmax(-1), y


@pytest.mark.parametrize("c,threshold", [(2, None), (2, 0.35), (3, None), (6, None)])
def test_weighted_metrics_equal_metrics_py_on_the_full_sample(c, threshold):
    probs, y = _predictions(700, c, c)
    ref = classification_metrics(probs, y, [str(k) for k in range(c)], threshold=threshold)
    got = resampled_metrics(np.ones((1, len(y))), probs.numpy(), y.numpy(), threshold)
    expected = [m for m in INTERVAL_METRICS if m in ref]
    assert sorted(got) == sorted(expected)
    for name in expected:
        assert float(got[name][0]) == pytest.approx(ref[name], abs=1e-6), name


@pytest.mark.parametrize("absent_class", [False, True])
def test_weighted_metrics_equal_metrics_py_on_a_resample(absent_class):
    """A row of counts is the same as repeating the images: compare with metrics.py on the repeated sample.
    ``absent_class``: class 3 is predicted but never the true class (it counts in macro F1, not in the AUCs)."""
    probs, y = _predictions(300, 4, 1)
    if absent_class:
        y = y % 3
    counts = stratified_counts(y.numpy(), 3, np.random.default_rng(5))
    got = resampled_metrics(counts, probs.numpy(), y.numpy())
    names = [str(k) for k in range(4)]
    for b in range(3):
        idx = torch.as_tensor(np.repeat(np.arange(len(y)), counts[b].astype(int)))
        ref = classification_metrics(probs[idx], y[idx], names)
        for name in got:
            assert float(got[name][b]) == pytest.approx(ref[name], abs=1e-6), name


def test_stratified_resamples_keep_every_class_and_its_size():
    y = np.array([0] * 95 + [1] * 4 + [2] * 1)
    counts = stratified_counts(y, 200, np.random.default_rng(0))
    assert counts.shape == (200, 100) and (counts.sum(1) == 100).all()
    for k, size in ((0, 95), (1, 4), (2, 1)):
        assert (counts[:, y == k].sum(1) == size).all()  # the rare classes are in every resample


def test_interval_contains_the_estimate_and_narrows_as_the_split_grows():
    widths = {}
    for n in (150, 2400):
        probs, y = _predictions(n, 3, 7, ties=False)
        point = classification_metrics(probs, y, ["a", "b", "c"])
        ci = bootstrap_intervals(probs, y, 400, 0.95, 0)
        for name in ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "pr_auc", "nll", "brier"):
            lo, hi = ci[name]
            assert lo <= point[name] <= hi, (n, name, lo, point[name], hi)
        widths[n] = {k: hi - lo for k, (lo, hi) in ci.items()}
    for name in widths[150]:
        assert widths[2400][name] < widths[150][name] / 2, name  # width ~ 1/sqrt(n): 4x smaller here


def test_seeded_and_the_level_sets_the_width():
    probs, y = _predictions(400, 2, 3)
    a = bootstrap_intervals(probs, y, 200, 0.95, seed=11, threshold=0.5)
    assert a == bootstrap_intervals(probs, y, 200, 0.95, seed=11, threshold=0.5)
    assert a != bootstrap_intervals(probs, y, 200, 0.95, seed=12, threshold=0.5)
    narrow = bootstrap_intervals(probs, y, 200, 0.5, seed=11, threshold=0.5)
    for name, (lo, hi) in narrow.items():
        assert a[name][0] <= lo <= hi <= a[name][1]
    assert {"sensitivity", "specificity"} <= set(a)


def test_a_thousand_resamples_of_3000_images_take_seconds():
    probs, y = _predictions(3000, 7, 4)
    start = time.perf_counter()
    bootstrap_intervals(probs, y, 1000, 0.95, 0)
    assert time.perf_counter() - start < 20  # ~1 s on an idle 2-core CPU


def test_metrics_json_keys_for_raw_calibrated_and_operating_point():
    probs, y = _predictions(300, 2, 5)
    state = Temperature(temperature=2.0, threshold=0.4)
    out = interval_metrics(probs, probs, y, state, SETTINGS, prefix="test/")
    for name in ("accuracy", "auroc", "ece", "nll"):
        assert out[f"test/{name}_ci_low"] <= out[f"test/{name}_ci_high"]
        assert f"test/{name}_calibrated_ci_low" in out
    assert "test/sensitivity_ci_low" in out and "test/sensitivity_calibrated_ci_low" not in out
    plain = interval_metrics(probs, probs, y, Uncalibrated(), SETTINGS)
    assert not any("_calibrated" in k or "sensitivity" in k for k in plain)
    assert interval_metrics(probs, probs, y, Uncalibrated(), {**SETTINGS, "bootstrap_resamples": 0}) == {}


def test_undefined_resampled_values_are_skipped_and_said(caplog):
    values = np.array([0.5, np.nan, 0.7, 0.6, np.nan])
    with caplog.at_level(logging.WARNING):
        lo, hi = percentile_interval(values, 0.9, "auroc")
    assert 0.5 <= lo <= hi <= 0.7
    assert "auroc is undefined in 2 of 5 resamples" in caplog.text
    assert percentile_interval(np.array([np.nan]), 0.9) is None
