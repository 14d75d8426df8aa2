"""Probability calibration fitted on the validation split: temperature scaling, Platt scaling, isotonic regression.

A fitted calibration is a plain dict (floats, lists, strings) so that it is stored in the checkpoint
(``save_with_calibration``) and read back with ``torch.load(..., weights_only=True)``. ``calibrated_probs(logits, state)`` turns logits into
probabilities with it; every prediction after training goes through that function.

State formats (binary tasks may add ``"threshold"``, see ``medimg.evaluation.threshold``)::

    None or {"method": "none"}                        softmax(logits)
    {"method": "temperature", "temperature": T}       softmax(logits / T)
    {"method": "platt", "a": a, "b": b}               binary: P(class 1) = sigmoid(a * (z1 - z0) + b)
    {"method": "isotonic", "classes": [c, ...],       per listed class c: P(c) = interpolation of softmax P(c)
     "x_thresholds": [[...], ...],                     through the isotonic step points; binary: only class 1
     "y_thresholds": [[...], ...]}                     (P(0) = 1 - P(1)); multiclass: every class, rows renormalised
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

METHODS = ("none", "temperature", "platt", "isotonic")


# ---------------------------------------------------------------------------------------------- applying
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
    if method == "isotonic":
        return _apply_isotonic(logits.softmax(-1), state)
    raise ValueError(f"unknown calibration method {method!r} in the calibration state; expected one of {METHODS}")


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
def nll(logits: torch.Tensor, targets: torch.Tensor, state: dict[str, Any] | None = None) -> float:
    """Mean negative log-likelihood of ``targets`` under the calibrated probabilities."""
    p = calibrated_probs(logits.double(), state).gather(1, targets.long().view(-1, 1)).squeeze(1)
    return float(-torch.log(p.clamp_min(np.finfo(np.float64).eps)).mean())


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """One temperature T minimising the validation NLL of softmax(logits / T) (LBFGS on log T).

    Never returns a T whose NLL is above that of T = 1 (the uncalibrated model).
    """
    z, y = logits.detach().double().cpu(), targets.detach().long().cpu()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp().clamp(1e-2, 1e2))
    before = nll(z, y, None)
    after = nll(z, y, {"method": "temperature", "temperature": t})
    if not np.isfinite(after) or after > before:
        log.warning("temperature scaling did not lower the validation NLL (%.4f -> %.4f); keeping T = 1", before, after)
        t, after = 1.0, before
    return {"method": "temperature", "temperature": t, "val_nll_before": before, "val_nll_after": after}


def fit_platt(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """Binary: P(class 1) = sigmoid(a * (z1 - z0) + b), a and b minimising the validation NLL (LBFGS).

    Starts from a = 1, b = 0 (the uncalibrated softmax) and never returns a fit with a higher NLL than that.
    """
    _require_binary(logits, "platt")
    z, y = logits.detach().double().cpu(), targets.detach().double().cpu()
    margin = z[:, 1] - z[:, 0]
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(ab[0] * margin + ab[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = (float(v) for v in ab.detach())
    before = nll(z, y, None)
    after = nll(z, y, {"method": "platt", "a": a, "b": b})
    if not np.isfinite(after) or after > before:
        log.warning("Platt scaling did not lower the validation NLL (%.4f -> %.4f); keeping a = 1, b = 0",
                    before, after)
        a, b, after = 1.0, 0.0, before
    return {"method": "platt", "a": a, "b": b, "val_nll_before": before, "val_nll_after": after}


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
    state["val_nll_before"] = nll(z, torch.as_tensor(y), None)
    state["val_nll_after"] = nll(z, torch.as_tensor(y), state)
    return state


def fit_calibration(method: str, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> dict[str, Any]:
    """Fit ``method`` (temperature | platt | isotonic | none) on validation logits and targets."""
    if len(targets) == 0:
        raise ValueError("cannot fit a calibration on an empty validation split")
    if method == "temperature":
        return fit_temperature(logits, targets, max_iter)
    if method == "platt":
        return fit_platt(logits, targets, max_iter)
    if method == "isotonic":
        return fit_isotonic(logits, targets)
    if method == "none":
        return {"method": "none"}
    raise ValueError(f"unknown calibration.method={method!r}; choose one of {METHODS}")


def describe(state: dict[str, Any] | None) -> str:
    """One line for logs and reports."""
    method = (state or {}).get("method", "none")
    parts = [method]
    if method == "temperature":
        parts.append(f"T = {state['temperature']:.4g}")
    elif method == "platt":
        parts.append(f"a = {state['a']:.4g}, b = {state['b']:.4g}")
    elif method == "isotonic":
        parts.append(f"{sum(len(x) for x in state['x_thresholds'])} step points")
    if state and "val_nll_before" in state:
        parts.append(f"validation NLL {state['val_nll_before']:.4f} -> {state['val_nll_after']:.4f}")
    if state and state.get("threshold") is not None:
        parts.append(f"operating threshold {state['threshold']:.4g} ({state.get('threshold_rule', '')})")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------- storing
def save_with_calibration(src: str | Path, dst: str | Path, state: dict[str, Any] | None) -> Path:
    """Copy the medimg checkpoint ``src`` to ``dst`` with ``state`` as its calibration (read safely, written
    atomically), so every later prediction from ``dst`` is calibrated."""
    from medimg.checkpoints import load_checkpoint  # local: keeps this module free of checkpoint machinery

    ckpt = load_checkpoint(src)
    ckpt["medimg"]["calibration"] = state
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    torch.save(ckpt, tmp)
    tmp.replace(dst)
    return dst
