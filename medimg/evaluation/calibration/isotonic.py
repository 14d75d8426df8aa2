"""Isotonic regression (scikit-learn) of the class indicator on the softmax probability.

Binary: one map for class 1 (P(0) = 1 - P(1)). Multiclass: one-vs-rest, one map per class, rows renormalised
(a row the maps send to all zeros keeps its uncalibrated probabilities). A map is stored as its step points
(``x_thresholds``, ``y_thresholds``) and applied by linear interpolation clipped at the ends, as
``IsotonicRegression.predict`` does; in the graph form the interpolation is a sum of clamped linear ramps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from medimg.evaluation.calibration.base import Calibration, floats
from medimg.evaluation.calibration.never_worse import calibrated_nll, with_nll


def _interp(x: torch.Tensor, xp: torch.Tensor, fp: torch.Tensor) -> torch.Tensor:
    """Piecewise-linear interpolation clipped at the ends (numpy.interp / sklearn IsotonicRegression.predict)."""
    if len(xp) == 1:
        return fp.expand_as(x).clone()
    idx = torch.searchsorted(xp, x.contiguous(), right=True).clamp(1, len(xp) - 1)
    x0, x1, y0, y1 = xp[idx - 1], xp[idx], fp[idx - 1], fp[idx]
    w = ((x - x0) / (x1 - x0)).clamp(0, 1)
    return y0 + w * (y1 - y0)


def _combine(probs: torch.Tensor, cols: list[torch.Tensor], binary: bool) -> torch.Tensor:
    if binary:
        return torch.stack([1 - cols[1], cols[1]], dim=1)
    out = torch.stack(cols, dim=1)
    total = out.sum(1, keepdim=True)
    return torch.where(total > 0, out / total.clamp_min(1e-300 if out.dtype == torch.float64 else 1e-30), probs)


class IsotonicLayer(nn.Module):
    """The maps as ramps: ``y0 + sum_k clamp((p - x_k) / (x_{k+1} - x_k), 0, 1) * (y_{k+1} - y_k)``."""

    def __init__(self, classes: Sequence[int], xs: Sequence[Sequence[float]], ys: Sequence[Sequence[float]],
                 num_classes: int):
        super().__init__()
        self.classes, self.num_classes = [int(c) for c in classes], num_classes
        self.steps = [len(x) - 1 for x in xs]
        for i, (x, y) in enumerate(zip(xs, ys)):
            x, y = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.float32)
            self.register_buffer(f"x0_{i}", x[:-1])
            self.register_buffer(f"w_{i}", (x[1:] - x[:-1]).clamp_min(1e-12))
            self.register_buffer(f"dy_{i}", y[1:] - y[:-1])
            self.register_buffer(f"y0_{i}", y[:1])

    def _column(self, p: torch.Tensor, i: int) -> torch.Tensor:
        x0, w, dy, y0 = (getattr(self, f"{n}_{i}") for n in ("x0", "w", "dy", "y0"))
        if self.steps[i] == 0:  # a single step point: a constant
            return y0.expand_as(p)
        ramps = ((p[:, None] - x0[None, :]) / w[None, :]).clamp(0, 1)
        return y0 + (ramps * dy[None, :]).sum(1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(logits, dim=-1)
        cols = [probs[:, c] for c in range(self.num_classes)]
        for i, c in enumerate(self.classes):
            cols[c] = self._column(probs[:, c], i)
        return _combine(probs, cols, self.num_classes == 2 and self.classes == [1])


@dataclass(frozen=True, kw_only=True)
class Isotonic(Calibration, method="isotonic"):
    classes: tuple[int, ...] = ()
    x_thresholds: tuple[tuple[float, ...], ...] = ()
    y_thresholds: tuple[tuple[float, ...], ...] = ()

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        probs = logits.softmax(-1)
        p = probs.double()
        cols = [p[:, c] for c in range(p.shape[1])]
        for c, xs, ys in zip(self.classes, self.x_thresholds, self.y_thresholds):
            xp = torch.tensor(xs, dtype=torch.float64, device=p.device)
            cols[int(c)] = _interp(p[:, int(c)], xp, torch.tensor(ys, dtype=torch.float64, device=p.device))
        binary = p.shape[1] == 2 and list(self.classes) == [1]
        return _combine(p, cols, binary).to(probs.dtype)

    def _module(self, num_classes: int) -> nn.Module:
        return IsotonicLayer(self.classes, self.x_thresholds, self.y_thresholds, num_classes)

    def _parameters(self) -> str:
        return f"{sum(len(x) for x in self.x_thresholds)} step points"

    @classmethod
    def fit(cls, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> Isotonic:
        from sklearn.isotonic import IsotonicRegression

        z, y = logits.detach().double().cpu(), targets.detach().long().cpu().numpy()
        probs = z.softmax(-1).numpy()
        classes = [1] if z.shape[1] == 2 else list(range(z.shape[1]))
        xs, ys = [], []
        for c in classes:
            ir = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
            ir.fit(probs[:, c], (y == c).astype(np.float64))
            xs.append(floats(ir.X_thresholds_))
            ys.append(floats(ir.y_thresholds_))
        fitted = cls(classes=tuple(classes), x_thresholds=tuple(xs), y_thresholds=tuple(ys))
        before = calibrated_nll(Calibration.registry["none"](), z, torch.as_tensor(y))
        return with_nll(fitted, before, z, torch.as_tensor(y))
