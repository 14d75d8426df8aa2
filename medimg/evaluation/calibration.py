"""Probability calibration fitted on the validation split: temperature, Platt, bias-corrected temperature (BCTS),
vector scaling, isotonic regression, and ``auto`` (the method with the lowest cross-validated validation NLL).

A fitted calibration is a plain dict (floats, lists, strings) so that it is stored in the checkpoint
(``medimg.inference.save_calibrated``) and read back with ``torch.load(..., weights_only=True)``. ``calibrated_probs(logits,
state)`` turns logits into probabilities with it; every prediction after training goes through that function.

State formats (binary tasks may add ``"threshold"``, see ``medimg.evaluation.threshold``)::

    None or {"method": "none"}                        softmax(logits)
    {"method": "temperature", "temperature": T}       softmax(logits / T)
    {"method": "platt", "a": a, "b": b}               binary: P(class 1) = sigmoid(a * (z1 - z0) + b)
    {"method": "bcts", "temperature": T,              softmax(logits / T + bias)
     "bias": [b_0, ...]}
    {"method": "vector", "scale": [w_0, ...],         softmax(scale * logits + bias)
     "bias": [b_0, ...]}
    {"method": "isotonic", "classes": [c, ...],       per listed class c: P(c) = interpolation of softmax P(c)
     "x_thresholds": [[...], ...],                     through the isotonic step points; binary: only class 1
     "y_thresholds": [[...], ...]}                     (P(0) = 1 - P(1)); multiclass: every class, rows renormalised

``auto`` stores the winner's state (its ``method`` is the winner's) plus ``"selection"``: the rule, the number
of folds and every candidate's cross-validated NLL. The scaling fits and their references are in
``medimg.evaluation.calibration_scaling``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from medimg.errors import CheckpointError, ConfigError
from medimg.evaluation import calibration_scaling as scaling
from medimg.evaluation.metrics import nll
from medimg.names import CALIBRATION_METHODS

log = logging.getLogger(__name__)

METHODS = CALIBRATION_METHODS


# ---------------------------------------------------------------------------------------------- applying
def is_calibrated(state: dict[str, Any] | None) -> bool:
    """Whether ``state`` changes the plain softmax (None and ``{"method": "none"}`` do not)."""
    return bool(state) and state.get("method", "none") != "none"


def calibrated_probs(logits: torch.Tensor, state: dict[str, Any] | None) -> torch.Tensor:
    """Class probabilities ``(N, C)`` from ``logits`` ``(N, C)`` under the calibration ``state`` (None = softmax)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C) with C >= 2, got {tuple(logits.shape)}")
    method = (state or {}).get("method", "none")
    if method == "none":
        return logits.softmax(-1)
    if method == "temperature":
        return (logits / float(state["temperature"])).softmax(-1)
    if method == "platt":
        _require_binary(logits, "platt")
        p1 = torch.sigmoid(float(state["a"]) * (logits[:, 1] - logits[:, 0]) + float(state["b"]))
        return torch.stack([1 - p1, p1], dim=1)
    if method == "bcts":
        return (logits / float(state["temperature"]) + _vector(state["bias"], logits)).softmax(-1)
    if method == "vector":
        return (logits * _vector(state["scale"], logits) + _vector(state["bias"], logits)).softmax(-1)
    if method == "isotonic":
        return _apply_isotonic(logits.softmax(-1), state)
    raise CheckpointError(f"the checkpoint's calibration names the method {method!r}, which is not one of "
                          f"{', '.join(METHODS)}; refit it: python -m medimg.evaluate ckpt_path=<ckpt> recalibrate=true")


def _vector(values, like: torch.Tensor) -> torch.Tensor:
    v = torch.tensor([float(x) for x in values], dtype=like.dtype, device=like.device)
    if len(v) != like.shape[1]:
        raise CheckpointError(f"the calibration has {len(v)} per-class values but the model has {like.shape[1]} "
                              "classes; refit it: python -m medimg.evaluate ckpt_path=<ckpt> recalibrate=true")
    return v


def _require_binary(logits: torch.Tensor, method: str) -> None:
    if logits.shape[1] != 2:
        raise ValueError(f"{method} calibration is for binary tasks; these logits have {logits.shape[1]} classes. "
                         "Use calibration=temperature or calibration=isotonic.")


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation clipped at the ends (numpy.interp / sklearn IsotonicRegression.predict)."""
    if len(xp) == 1:
        return fp.expand_as(x).clone()
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def _apply_isotonic(probs: torch.Tensor, state: dict[str, Any]) -> torch.Tensor:
    classes = [int(c) for c in state["classes"]]
    out = probs.double().clone()
    for c, xs, ys in zip(classes, state["x_thresholds"], state["y_thresholds"]):
        xp = torch.tensor(xs, dtype=torch.float64, device=probs.device)
        fp = torch.tensor(ys, dtype=torch.float64, device=probs.device)
        out[:, c] = _interp(out[:, c], xp, fp)
    if probs.shape[1] == 2 and classes == [1]:
        out[:, 0] = 1 - out[:, 1]
    else:
        total = out.sum(1, keepdim=True)
        # a row the per-class maps send to all zeros keeps its uncalibrated probabilities
        out = torch.where(total > 0, out / total.clamp_min(1e-300), probs.double())
    return out.to(probs.dtype)


# ---------------------------------------------------------------------------------------------- fitting
def calibrated_nll(logits: torch.Tensor, targets: torch.Tensor, state: dict[str, Any] | None = None) -> float:
    """Mean negative log-likelihood of ``targets`` under the calibrated probabilities (``metrics.nll``)."""
    return nll(calibrated_probs(logits.double(), state), targets)


def _never_worse(state: dict[str, Any], identity: dict[str, Any], logits: torch.Tensor,
                 targets: torch.Tensor, name: str) -> dict[str, Any]:
    """``state`` with its validation NLL before/after; the identity (uncalibrated) parameters instead when the
    fit does not lower the validation NLL."""
    z, y = logits.detach().double().cpu(), targets.detach().long().cpu()
    before, after = calibrated_nll(z, y, None), calibrated_nll(z, y, state)
    if not np.isfinite(after) or after > before:
        log.warning("%s did not lower the validation NLL (%.4f -> %.4f); keeping the uncalibrated model",
                    name, before, after)
        state, after = identity, before
    return {**state, "val_nll_before": before, "val_nll_after": after}


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """One temperature T minimising the validation NLL of softmax(logits / T); never above T = 1's NLL."""
    t = scaling.lbfgs_temperature(logits, targets, max_iter)
    return _never_worse({"method": "temperature", "temperature": t}, {"method": "temperature", "temperature": 1.0},
                        logits, targets, "temperature scaling")


def fit_platt(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """Binary: P(class 1) = sigmoid(a * (z1 - z0) + b); never above the NLL of a = 1, b = 0 (the softmax)."""
    _require_binary(logits, "platt")
    a, b = scaling.lbfgs_platt(logits, targets, max_iter)
    return _never_worse({"method": "platt", "a": a, "b": b}, {"method": "platt", "a": 1.0, "b": 0.0},
                        logits, targets, "Platt scaling")


def fit_bcts(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """Bias-corrected temperature scaling: softmax(logits / T + bias); never above the uncalibrated NLL."""
    t, bias = scaling.lbfgs_bcts(logits, targets, max_iter)
    zero = [0.0] * logits.shape[1]
    return _never_worse({"method": "bcts", "temperature": t, "bias": bias},
                        {"method": "bcts", "temperature": 1.0, "bias": zero}, logits, targets,
                        "bias-corrected temperature scaling")


def fit_vector(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """Vector scaling: softmax(scale * logits + bias); never above the uncalibrated NLL."""
    scale, bias = scaling.lbfgs_vector(logits, targets, max_iter)
    c = logits.shape[1]
    return _never_worse({"method": "vector", "scale": scale, "bias": bias},
                        {"method": "vector", "scale": [1.0] * c, "bias": [0.0] * c}, logits, targets,
                        "vector scaling")


def fit_isotonic(logits: torch.Tensor, targets: torch.Tensor) -> dict[str, Any]:
    """Isotonic regression (scikit-learn) of the class indicator on the softmax probability.

    Binary: one map for class 1. Multiclass: one-vs-rest, one map per class, rows renormalised on use.
    """
    from sklearn.isotonic import IsotonicRegression

    z, y = logits.detach().double().cpu(), targets.detach().long().cpu().numpy()
    probs = z.softmax(-1).numpy()
    classes = [1] if z.shape[1] == 2 else list(range(z.shape[1]))
    xs, ys = [], []
    for c in classes:
        ir = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        ir.fit(probs[:, c], (y == c).astype(np.float64))
        xs.append([float(v) for v in ir.X_thresholds_])
        ys.append([float(v) for v in ir.y_thresholds_])
    state = {"method": "isotonic", "classes": classes, "x_thresholds": xs, "y_thresholds": ys}
    state["val_nll_before"] = calibrated_nll(z, torch.as_tensor(y), None)
    state["val_nll_after"] = calibrated_nll(z, torch.as_tensor(y), state)
    return state


def fit_method(method: str, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """Fit one method (temperature | platt | bcts | vector | isotonic | none) on validation logits and targets;
    ``auto``, which compares them, is ``calibration_select.fit_calibration``."""
    if len(targets) == 0:
        raise ValueError("cannot fit a calibration on an empty validation split")
    fits = {"temperature": fit_temperature, "platt": fit_platt, "bcts": fit_bcts, "vector": fit_vector}
    if method in fits:
        return fits[method](logits, targets, max_iter)
    if method == "isotonic":
        return fit_isotonic(logits, targets)
    if method == "none":
        return {"method": "none"}
    raise ConfigError(f"unknown calibration.method={method!r}; choose one of {METHODS}")


def describe(state: dict[str, Any] | None) -> str:
    """One line for logs and reports."""
    method = (state or {}).get("method", "none")
    parts = [method]
    if method == "temperature":
        parts.append(f"T = {state['temperature']:.4g}")
    elif method == "platt":
        parts.append(f"a = {state['a']:.4g}, b = {state['b']:.4g}")
    elif method == "bcts":
        parts.append(f"T = {state['temperature']:.4g}, bias = [{_short(state['bias'])}]")
    elif method == "vector":
        parts.append(f"scale = [{_short(state['scale'])}], bias = [{_short(state['bias'])}]")
    elif method == "isotonic":
        parts.append(f"{sum(len(x) for x in state['x_thresholds'])} step points")
    if state and "selection" in state:
        sel = state["selection"]
        scores = ", ".join(f"{k} {v:.4f}" for k, v in sel["cv_nll"].items())
        parts.append(f"chosen by {sel['folds']}-fold cross-validated validation NLL ({scores})")
    if state and "val_nll_before" in state:
        parts.append(f"validation NLL {state['val_nll_before']:.4f} -> {state['val_nll_after']:.4f}")
    if state and state.get("threshold") is not None:
        parts.append(f"operating threshold {state['threshold']:.4g} ({state.get('threshold_rule', '')})")
    return ", ".join(parts)


def _short(values) -> str:
    return ", ".join(f"{float(v):.3g}" for v in values)


# ---------------------------------------------------------------------------------------------- storing
