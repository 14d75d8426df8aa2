"""Calibration (temperature, Platt, isotonic) and the operating threshold: pure functions, no Lightning."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from sklearn.isotonic import IsotonicRegression

from medimg.errors import CheckpointError
from medimg.evaluation.calibration import (
    Calibration,
    Platt,
    Temperature,
    Uncalibrated,
    calibrated_nll,
    choose_threshold,
    fit_calibration,
)
from medimg.evaluation.metrics import classification_metrics

SOFTMAX = Uncalibrated()


def _overconfident(n: int, c: int, seed: int, scale: float = 4.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z), logits reported as scale * z: a model ``scale`` times too sure of itself."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 1.5
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z * scale, y


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("c,seed", [(2, 0), (4, 1), (7, 2)])
def test_temperature_never_increases_validation_nll(scale, c, seed):
    z, y = _overconfident(400, c, seed, scale)
    state = fit_calibration("temperature", z, y)
    assert isinstance(state, Temperature) and state.method == "temperature"
    assert calibrated_nll(state, z, y) <= calibrated_nll(SOFTMAX, z, y) + 1e-12
    assert abs(state.temperature - scale) / scale < 0.35  # recovers the scale the logits were inflated by


def test_temperature_never_increases_nll_on_degenerate_splits():
    z = torch.tensor([[5.0, -5.0], [6.0, -4.0], [-3.0, 3.0]])
    for y in (torch.tensor([0, 0, 1]), torch.tensor([1, 1, 0]), torch.tensor([0, 0, 0])):
        state = fit_calibration("temperature", z, y)
        assert calibrated_nll(state, z, y) <= calibrated_nll(SOFTMAX, z, y) + 1e-12
        assert np.isfinite(state.temperature) and state.temperature > 0


@pytest.mark.parametrize("c", [2, 5])
def test_temperature_halves_test_ece_on_overconfident_logits(c):
    zv, yv = _overconfident(2000, c, 10 + c)
    zt, yt = _overconfident(2000, c, 20 + c)
    state = fit_calibration("temperature", zv, yv)
    names = [str(k) for k in range(c)]
    before = classification_metrics(SOFTMAX.probs(zt), yt, names)["ece"]
    after = classification_metrics(state.probs(zt), yt, names)["ece"]
    assert before > 0.05 and after <= before / 2, (before, after)


def test_temperature_format_is_softmax_of_scaled_logits():
    z = torch.randn(10, 3)
    state = Calibration.from_dict({"method": "temperature", "temperature": 2.5, "threshold": 0.3})
    assert isinstance(state, Temperature) and state.threshold == 0.3
    torch.testing.assert_close(state.probs(z), torch.softmax(z / 2.5, -1))
    torch.testing.assert_close(SOFTMAX.probs(z), torch.softmax(z, -1))
    torch.testing.assert_close(Calibration.from_dict({"method": "none"}).probs(z), torch.softmax(z, -1))
    torch.testing.assert_close(Calibration.from_dict(None).probs(z), torch.softmax(z, -1))


def test_platt_binary_lowers_nll_and_rejects_multiclass():
    z, y = _overconfident(600, 2, 3)
    z = z + torch.tensor([0.0, 1.5])  # also biased towards class 1
    state = fit_calibration("platt", z, y)
    assert calibrated_nll(state, z, y) < calibrated_nll(SOFTMAX, z, y)
    p = state.probs(z)
    torch.testing.assert_close(p.sum(1), torch.ones(600))
    expected = torch.sigmoid(state.a * (z[:, 1] - z[:, 0]) + state.b)
    torch.testing.assert_close(p[:, 1], expected)
    with pytest.raises(ValueError, match="binary"):
        fit_calibration("platt", torch.randn(10, 3), torch.zeros(10, dtype=torch.long))


@pytest.mark.parametrize("c", [2, 4])
def test_isotonic_matches_sklearn(c):
    z, y = _overconfident(500, c, 4)
    state = fit_calibration("isotonic", z, y)
    zt, _ = _overconfident(300, c, 5)
    p = state.probs(zt.double())
    raw_v, raw_t = z.double().softmax(-1).numpy(), zt.double().softmax(-1).numpy()
    cols = [1] if c == 2 else range(c)
    ref = raw_t.copy()
    for k in cols:
        ir = IsotonicRegression(y_min=0, y_max=1, out_of_bounds="clip").fit(raw_v[:, k], (y.numpy() == k))
        ref[:, k] = ir.predict(raw_t[:, k])
    if c == 2:
        ref[:, 0] = 1 - ref[:, 1]
    else:
        ref = ref / ref.sum(1, keepdims=True)
    np.testing.assert_allclose(p.numpy(), ref, atol=1e-12)
    assert calibrated_nll(state, z, y) < calibrated_nll(SOFTMAX, z, y)


@pytest.mark.parametrize("method", ["temperature", "platt", "bcts", "vector", "isotonic", "auto", "none"])
def test_state_survives_weights_only_loading(method):
    z, y = _overconfident(200, 2, 6)
    state = fit_calibration(method, z, y, selection={"candidates": ["temperature", "bcts"], "folds": 3, "seed": 0})
    state = state.replace(threshold=0.4, threshold_rule="youden")
    buf = io.BytesIO()
    torch.save({"medimg": {"calibration": state.to_dict()}}, buf)
    buf.seek(0)
    stored = torch.load(buf, weights_only=True)["medimg"]["calibration"]
    assert stored == state.to_dict() and stored["method"] == state.method
    back = Calibration.from_dict(stored)
    assert back == state and type(back) is type(state)
    torch.testing.assert_close(back.probs(z), state.probs(z))
    assert back.decide(back.probs(z)).tolist() == (back.probs(z)[:, 1] >= 0.4).long().tolist()


def test_unknown_method_is_named():
    with pytest.raises(ValueError, match="calibration.method='beta'"):
        fit_calibration("beta", torch.randn(4, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(CheckpointError, match="'beta'"):
        Calibration.from_dict({"method": "beta"})
    with pytest.raises(CheckpointError, match="keys \\['gamma'\\]"):
        Calibration.from_dict({"method": "temperature", "temperature": 2.0, "gamma": 1})
    with pytest.raises(CheckpointError, match="3 values of 'bias' but the model has 2 classes"):
        Calibration.from_dict({"method": "bcts", "temperature": 1.0, "bias": [0, 0, 0]}).probs(torch.randn(4, 2))
    with pytest.raises(CheckpointError, match="binary"):
        Platt(a=1.0, b=0.0).probs(torch.randn(4, 3))


def test_youden_threshold_maximises_j():
    g = torch.Generator().manual_seed(7)
    y = torch.randint(0, 2, (400,), generator=g)
    p = (torch.randn(400, generator=g) * 0.2 + 0.3 + 0.25 * y).clamp(0, 1)
    t = choose_threshold(p, y, "youden")

    def j(th):
        pred = p >= th
        return (pred & (y == 1)).sum() / (y == 1).sum() + (~pred & (y == 0)).sum() / (y == 0).sum() - 1

    best = max(float(j(v)) for v in p.unique())
    assert abs(float(j(t)) - best) < 1e-9


def test_target_sensitivity_threshold():
    g = torch.Generator().manual_seed(8)
    y = torch.randint(0, 2, (400,), generator=g)
    p = torch.rand(400, generator=g) * 0.6 + 0.4 * y
    for target in (0.8, 0.95, 1.0):
        t = choose_threshold(p, y, "target_sensitivity", target)
        sens = float(((p >= t) & (y == 1)).sum() / (y == 1).sum())
        assert sens >= target
        higher = p[p > t]  # the next threshold up would miss the target: t is the most specific choice
        if len(higher):
            t2 = float(higher.min())
            assert float(((p >= t2) & (y == 1)).sum() / (y == 1).sum()) < target
    assert choose_threshold(p, y, 0.3) == 0.3
    with pytest.raises(ValueError, match="target_sensitivity"):
        choose_threshold(p, y, "target_sensitivity", None)
    with pytest.raises(ValueError, match="calibration.threshold"):
        choose_threshold(p, y, "best")
    assert choose_threshold(p, torch.zeros_like(y), "youden") == 0.5  # one class only: falls back, warns


def test_a_calibration_is_a_frozen_value_and_a_method_is_one_registered_subclass():
    import dataclasses

    t = Temperature(temperature=2.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.temperature = 3.0
    assert t.replace(threshold=0.3).threshold == 0.3 and t.threshold is None

    @dataclasses.dataclass(frozen=True, kw_only=True)
    class Shift(Calibration, method="shift_for_test"):
        shift: float = 0.0

        def _probs(self, logits):
            return (logits + self.shift).softmax(-1)

    try:
        c = Calibration.from_dict({"method": "shift_for_test", "shift": 1.0, "threshold": 0.3})
        assert isinstance(c, Shift) and c.to_dict() == {"method": "shift_for_test", "threshold": 0.3, "shift": 1.0}
        z = torch.randn(5, 2)
        torch.testing.assert_close(c.probs(z), (z + 1).softmax(-1))
        assert c.describe().startswith("shift_for_test") and "operating threshold 0.3" in c.describe()
    finally:
        Calibration.registry.pop("shift_for_test")
