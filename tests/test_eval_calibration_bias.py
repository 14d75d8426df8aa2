"""Calibration that undoes class weighting: bias-corrected temperature scaling (BCTS), vector scaling and the
cross-validated choice among methods (calibration=auto). Pure functions, no Lightning."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from medimg.errors import CheckpointError, ConfigError
from medimg.evaluation.calibration import Calibration, Uncalibrated, calibrated_nll, fit_auto, fit_calibration
from medimg.evaluation.calibration.selection import fold_indices
from medimg.evaluation.metrics import classification_metrics

SOFTMAX = Uncalibrated()
SELECTION = {"candidates": ["temperature", "bcts", "vector", "isotonic", "platt"], "folds": 5, "seed": 0}


def _logits(n: int, c: int, seed: int, scale: float = 1.0, offset=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels drawn from softmax(z); the model reports scale * z + offset (offset: a per-class prior shift, as
    class-weighted training adds about log w_c to class c's logit)."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2.0
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    shift = torch.zeros(c) if offset is None else torch.as_tensor(offset, dtype=torch.float32)
    return z * scale + shift, y


def _scores(state, z, y) -> dict[str, float]:
    """Test ECE, NLL and the prior gap: max over classes of |mean predicted P(c) - frequency of c|."""
    names = [str(k) for k in range(z.shape[1])]
    p = state.probs(z.double())
    m = classification_metrics(p, y, names)
    freq = torch.bincount(y, minlength=z.shape[1]).double() / len(y)
    return {"ece": m["ece"], "nll": m["nll"], "prior_gap": float((p.mean(0) - freq).abs().max())}


@pytest.mark.parametrize("scale", [0.5, 2.5])
def test_bcts_equals_temperature_scaling_on_balanced_priors(scale):
    z, y = _logits(4000, 4, 1, scale)
    temp = fit_calibration("temperature", z, y)
    bcts = fit_calibration("bcts", z, y)
    assert abs(bcts.temperature - temp.temperature) / temp.temperature < 0.05
    assert max(abs(b) for b in bcts.bias) < 0.1  # no prior shift: (almost) no bias
    diff = (bcts.probs(z.double()) - temp.probs(z.double())).abs().max()
    assert float(diff) < 0.03
    assert abs(calibrated_nll(bcts, z, y) - calibrated_nll(temp, z, y)) < 2e-3


def test_bcts_and_vector_repair_a_prior_shift_that_temperature_cannot():
    offset = np.log([0.2, 0.8, 1.3, 1.7])  # log class weights of a class-weighted loss
    zv, yv = _logits(3000, 4, 2, 1.6, offset)
    zt, yt = _logits(3000, 4, 3, 1.6, offset)
    temp = fit_calibration("temperature", zv, yv)
    bcts = fit_calibration("bcts", zv, yv)
    vector = fit_calibration("vector", zv, yv)
    s_t, s_b, s_v = _scores(temp, zt, yt), _scores(bcts, zt, yt), _scores(vector, zt, yt)
    assert s_t["prior_gap"] > 0.08  # one temperature leaves the shifted class priors in place
    for s in (s_b, s_v):
        assert s["prior_gap"] < 0.01 and s["ece"] < 0.02 and s["ece"] < s_t["ece"], (s_t, s)
        assert s["nll"] < s_t["nll"] - 0.04, (s_t, s)
    # the bias undoes the offset: bias ~ -(offset / scale) / T... i.e. -offset / (scale * T) up to a constant
    want = -(offset - offset.mean()) / bcts.temperature
    np.testing.assert_allclose(bcts.bias, want, atol=0.12)
    assert abs(bcts.temperature - 1.6) < 0.1
    assert abs(sum(bcts.bias)) < 1e-9 and abs(sum(vector.bias)) < 1e-9  # stored centred


@pytest.mark.parametrize("method", ["bcts", "vector"])
@pytest.mark.parametrize("c,seed", [(2, 0), (5, 1)])
def test_never_worse_than_uncalibrated_on_validation(method, c, seed):
    z, y = _logits(300, c, seed, 3.0, np.linspace(-1, 1, c))
    state = fit_calibration(method, z, y)
    assert state.method == method
    assert calibrated_nll(state, z, y) <= calibrated_nll(SOFTMAX, z, y) + 1e-12
    assert state.val_nll_after <= state.val_nll_before
    # degenerate splits (one class only, three images) still give a finite state no worse than the softmax
    zd, yd = torch.tensor([[5.0, -5.0], [6.0, -4.0], [-3.0, 3.0]]), torch.tensor([0, 0, 0])
    sd = fit_calibration(method, zd, yd)
    assert calibrated_nll(sd, zd, yd) <= calibrated_nll(SOFTMAX, zd, yd) + 1e-12
    assert all(math.isfinite(v) for v in sd.bias)


def test_state_formats():
    z = torch.randn(20, 3)
    bcts = Calibration.from_dict({"method": "bcts", "temperature": 2.0, "bias": [0.5, 0.0, -0.5]})
    vector = Calibration.from_dict({"method": "vector", "scale": [1.0, 0.5, 2.0], "bias": [0.1, 0.2, -0.3]})
    torch.testing.assert_close(bcts.probs(z), torch.softmax(z / 2 + torch.tensor([0.5, 0, -0.5]), -1))
    torch.testing.assert_close(vector.probs(z),
                               torch.softmax(z * torch.tensor([1.0, 0.5, 2.0]) + torch.tensor([0.1, 0.2, -0.3]), -1))
    with pytest.raises(CheckpointError, match="3 values of 'bias' but the model has 2 classes"):
        bcts.probs(torch.randn(4, 2))
    zf, yf = _logits(200, 3, 4, 2.0, [0.0, 1.0, -1.0])
    for method in ("bcts", "vector"):  # (saving in a checkpoint: test_eval_calibration.py)
        state = fit_calibration(method, zf, yf)
        assert all(isinstance(v, float) for k in ("bias", "scale") for v in state.to_dict().get(k, []))


def test_auto_picks_by_cross_validated_nll_and_records_every_candidate():
    zv, yv = _logits(600, 4, 5, 1.5, np.log([0.2, 0.8, 1.3, 1.7]))
    state = fit_calibration("auto", zv, yv, selection=SELECTION)
    sel = state.selection
    assert set(sel["cv_nll"]) == {"temperature", "bcts", "vector", "isotonic"}  # no platt for 4 classes
    assert sel["folds"] == 5 and state.method == min(sel["cv_nll"], key=sel["cv_nll"].get)
    assert state.method in ("bcts", "vector")  # the prior shift is what matters here
    assert sel["cv_nll"]["bcts"] < sel["cv_nll"]["temperature"]
    refit = fit_calibration(state.method, zv, yv)  # the winner is refitted on the whole split
    assert calibrated_nll(state, zv, yv) == pytest.approx(calibrated_nll(refit, zv, yv), abs=1e-9)
    assert "chosen by 5-fold cross-validated validation NLL" in state.describe()


def test_auto_on_a_binary_task_considers_platt_and_can_keep_none():
    zv, yv = _logits(400, 2, 6, 3.0)
    state = fit_auto(zv, yv, ["temperature", "platt", "none"], folds=4, seed=1, max_iter=100)
    assert set(state.selection["cv_nll"]) == {"temperature", "platt", "none"}
    assert state.method in ("temperature", "platt")  # 3x over-confident: scaling beats none
    assert state.selection["cv_nll"]["none"] == pytest.approx(calibrated_nll(SOFTMAX, zv, yv))


def test_auto_configuration_errors_name_the_keys():
    z, y = _logits(50, 3, 7)
    with pytest.raises(ConfigError, match=r"\['folds', 'seed'\].*auto.yaml"):
        fit_calibration("auto", z, y, selection={"candidates": ["bcts"]})
    with pytest.raises(ConfigError, match="unknown methods \\['beta'\\]"):
        fit_calibration("auto", z, y, selection={**SELECTION, "candidates": ["bcts", "beta"]})
    with pytest.raises(ConfigError, match="leaves no method"):
        fit_calibration("auto", z, y, selection={**SELECTION, "candidates": ["platt"]})
    with pytest.raises(ConfigError, match="at least 4 validation images"):
        fit_calibration("auto", z[:3], y[:3], selection=SELECTION)


def test_folds_adapt_to_small_and_rare_classes():
    y = np.array([0] * 30 + [1] * 3 + [2] * 7)
    folds = fold_indices(y, 5, 0)
    assert len(folds) == 3  # the rarest class has 3 images: 3 stratified folds
    held = np.concatenate([o for _, o in folds])
    assert sorted(held) == list(range(len(y)))  # every image held out exactly once
    for _, out in folds:
        assert (y[out] == 1).sum() == 1
    single = np.array([0] * 10 + [1])
    assert len(fold_indices(single, 5, 0)) == 5  # a class of one image: unstratified folds
