"""Bootstrap intervals: the vectorised metrics equal metrics.py on the full sample, every interval contains the
value it goes with (ECE bias-corrected), BCa and the basic interval as defined, coverage where the truth is known,
intervals narrow as the split grows, stratified resamples keep every class, seeded, fast."""

from __future__ import annotations

import logging
import time
from statistics import NormalDist

import numpy as np
import pytest
import torch

from medimg.evaluation import bootstrap
from medimg.evaluation.bootstrap import (
    INTERVAL_METRICS,
    bootstrap_intervals,
    interval_metrics,
    percentile_interval,
    resample_distribution,
    stratified_counts,
)
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
    from medimg.evaluation.calibration import Temperature, Uncalibrated

    probs, y = _predictions(300, 2, 5)
    out = interval_metrics(probs, probs, y, Temperature(temperature=2.0, threshold=0.4), SETTINGS, prefix="test/")
    for name in ("accuracy", "auroc", "nll", "ece_debiased"):
        assert out[f"test/{name}_ci_low"] <= out[f"test/{name}_ci_high"]
    for name in ("accuracy", "auroc", "nll"):
        assert f"test/{name}_calibrated_ci_low" in out
    assert out["test/ece_debiased_ci_low"] <= out["test/ece_debiased"] <= out["test/ece_debiased_ci_high"]
    assert "test/ece_calibrated_debiased" in out and "test/ece_calibrated_debiased_ci_high" in out
    assert "test/ece_ci_low" not in out and "test/ece_calibrated_ci_low" not in out  # the plug-in ECE has none
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


def _well_calibrated(n: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and labels drawn from them: the true (population) ECE is 0."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, c)) * 2.0
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    return p, (p.cumsum(1) > rng.random((n, 1))).argmax(1)


def test_ece_interval_contains_its_estimate_where_the_percentile_interval_does_not():
    """600 well-calibrated images: the ECE of a resample is inflated, so all but a few resampled ECEs lie
    above the sample's ECE and the percentile interval excludes it. ECE is now reported bias-corrected, with
    an interval around that value; what bootstrap_intervals gives contains each metric's own value."""
    probs, y = _well_calibrated(600, 3, 4)
    point = classification_metrics(torch.from_numpy(probs), torch.from_numpy(y), ["a", "b", "c"])
    lo, hi = percentile_interval(resample_distribution(probs, y, 300, 0)["ece"], 0.95)
    assert point["ece"] < lo  # the failure: the percentile interval lies above its estimate
    for name, (lo, hi) in bootstrap_intervals(probs, y, 300, 0.95, 0).items():
        assert lo <= point[name] <= hi, (name, lo, point[name], hi)
    ece = bootstrap.interval_table(probs, y, 300, 0.95, 0)["ece_debiased"]
    assert ece.method == "basic" and 0 <= ece.low <= ece.estimate <= ece.high < point["ece"]


@pytest.mark.parametrize("n,c,temperature,threshold,seed", [
    (40, 2, 1.0, 0.3, 0), (600, 2, 0.5, 0.5, 1), (600, 3, 1.0, None, 4), (120, 5, 2.0, None, 2),
    (2000, 4, 0.7, None, 3)])
def test_every_written_interval_contains_its_value(n, c, temperature, threshold, seed):
    """What metrics.json holds: each ``<key>_ci_low`` / ``_ci_high`` brackets ``<key>``, for small and large
    splits, binary and multiclass, over- and underconfident probabilities, with and without a threshold
    (seed 4 of 600 x 3: the set whose percentile ECE interval excludes its ECE, raw and calibrated)."""
    from medimg.evaluation.calibration import Temperature
    from medimg.evaluation.evaluator import split_metrics

    p, y = _well_calibrated(n, c, seed)
    raw = torch.from_numpy(p).log().mul(temperature).softmax(-1)  # miscalibrated: the calibrated set is p
    calibration = Temperature(temperature=temperature, threshold=threshold)
    targets = torch.from_numpy(y)
    metrics = split_metrics(raw, torch.from_numpy(p), targets, [str(k) for k in range(c)], calibration)
    metrics.update(interval_metrics(raw, torch.from_numpy(p), targets, calibration, SETTINGS))
    keys = [k.removesuffix("_ci_low") for k in metrics if k.endswith("_ci_low")]
    assert {"test/ece_debiased", "test/ece_calibrated_debiased", "test/accuracy", "test/auroc_calibrated"} <= set(keys)
    for key in keys:
        # 1e-6: metrics.py and weighted_metrics agree to that (float32 torchmetrics), not to the last bit
        assert metrics[f"{key}_ci_low"] - 1e-6 <= metrics[key] <= metrics[f"{key}_ci_high"] + 1e-6, key


def test_bca_is_the_percentile_interval_without_bias_and_corrects_a_bias():
    values = np.array([NormalDist().inv_cdf((i + 0.5) / 20_000) for i in range(20_000)])  # N(0, 1), no noise
    centre = float(np.median(values))  # resamples centred on the estimate, no skew: the percentile interval
    assert bootstrap.bca_interval(values, centre, 0.0, 0.9) == pytest.approx(percentile_interval(values, 0.9))
    # resamples half a spread above the estimate (z0 = -0.5): the interval is centred half a spread below it
    lo, hi = bootstrap.bca_interval(values + 0.5, 0.0, 0.0, 0.9)
    assert (lo, hi) == pytest.approx((-0.5 - 1.645, -0.5 + 1.645), abs=0.01)
    basic = bootstrap.basic_interval(values + 0.5, 0.2, 0.9, "nll")
    assert basic.estimate == 0.0 and basic.low == 0.0  # 2 x 0.2 - median 0.5, and lower, clipped at 0
    assert basic.high == pytest.approx(0.4 - (0.5 - 1.645), abs=0.01)  # 2 x 0.2 - the 5th percentile


def test_acceleration_of_a_mean_is_its_skewness_over_6_sqrt_n():
    x = np.random.default_rng(1).exponential(size=200)
    jack = (x.sum() - x) / (len(x) - 1)  # the leave-one-out means
    d = x - x.mean()
    skew = (d ** 3).mean() / (d ** 2).mean() ** 1.5
    assert bootstrap.acceleration(jack) == pytest.approx(skew / (6 * np.sqrt(len(x))), rel=1e-9)
    assert bootstrap.acceleration(np.ones(5)) == 0.0
    probs, y = _well_calibrated(150, 3, 0)  # up to JACKKNIFE_GROUPS images: leave one out
    hits = (probs.argmax(1) == y).astype(float)
    got = np.sort(bootstrap.jackknife_values(probs, y, 0)["accuracy"])
    assert got == pytest.approx(np.sort((hits.sum() - hits) / (len(y) - 1)))


def _overconfident(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model's probabilities (logits doubled), the true ones, labels drawn from the true ones."""
    z = rng.normal(size=(n, 3)) * 1.5
    q, p = np.exp(z), np.exp(2 * z)
    q, p = q / q.sum(1, keepdims=True), p / p.sum(1, keepdims=True)
    return p, q, (q.cumsum(1) > rng.random((n, 1))).argmax(1)


def test_coverage_where_the_truth_is_known():
    """Population accuracy and binned ECE of an overconfident model (from 400k images and their true
    probabilities); 40 splits of 400 images: the 95% intervals cover them in most splits."""
    p, q, _ = _overconfident(400_000, np.random.default_rng(123))
    conf, top = p.max(1), p.argmax(1)
    right = q[np.arange(len(q)), top]  # P(the top label is right)
    bins = np.searchsorted(np.linspace(0, 1, 16)[1:-1], conf, side="left")
    true_ece, true_acc = np.abs(np.bincount(bins, conf - right, 15)).sum() / len(p), right.mean()
    rng, covered = np.random.default_rng(7), {"accuracy": 0, "ece_debiased": 0}
    for r in range(40):
        p, _, y = _overconfident(400, rng)
        table = bootstrap.interval_table(p, y, 200, 0.95, r)
        for name, truth in (("accuracy", true_acc), ("ece_debiased", true_ece)):
            covered[name] += table[name].low <= truth <= table[name].high
    assert covered["accuracy"] >= 34 and covered["ece_debiased"] >= 34, covered  # ~38 expected


def test_report_prints_the_bias_corrected_ece_and_names_the_methods(tmp_path):
    from medimg.evaluation.report import write_report

    m = {"test/accuracy": 0.9, "test/accuracy_ci_low": 0.88, "test/accuracy_ci_high": 0.92, "test/ece": 0.0116,
         "test/ece_debiased": 0.0005, "test/ece_debiased_ci_low": 0.0, "test/ece_debiased_ci_high": 0.0101}
    text = write_report(tmp_path / "report.md", "t", [], m, [], {}).read_text()
    assert "| accuracy | 0.9000 [0.8800, 0.9200] |" in text
    assert "| ECE (top label, 15 bins) | 0.0116 (bias-corrected: 0.0005 [0.0000, 0.0101]) |" in text
    assert "BCa (bias-corrected and accelerated" in text and "basic bootstrap interval" in text
