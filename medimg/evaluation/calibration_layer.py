"""The calibration of a checkpoint as graph operations: ``calibrated_probs`` in a form that exports to ONNX.

No ``searchsorted`` and no Python branching on data: temperature, BCTS and vector scaling are an affine map of
the logits and a softmax; Platt a sigmoid of the logit margin; isotonic maps become sums of clamped linear
ramps. ``tests/test_export.py`` checks every method against ``calibrated_probs`` in onnxruntime.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from medimg.errors import UserError


class CalibrationGraphError(UserError, ValueError):
    """A stored calibration that cannot be turned into graph operations."""


class CalibrationLayer(nn.Module):
    """``calibrated_probs`` as plain tensor operations that export to ONNX (no searchsorted, no Python
    branching on data). Temperature, BCTS and vector scaling are an affine map of the logits and a softmax;
    isotonic maps become sums of clamped linear ramps."""

    def __init__(self, state: dict[str, Any] | None, num_classes: int):
        super().__init__()
        self.method = (state or {}).get("method", "none")
        self.num_classes = num_classes
        if self.method == "temperature":
            self.register_buffer("temperature", torch.tensor(float(state["temperature"])))
        elif self.method == "platt":
            if num_classes != 2:
                raise CalibrationGraphError(f"platt calibration needs a binary model, this one has {num_classes} classes")
            self.register_buffer("ab", torch.tensor([float(state["a"]), float(state["b"])]))
        elif self.method == "bcts":
            self.register_buffer("temperature", torch.tensor(float(state["temperature"])))
            self.register_buffer("bias", self._per_class(state["bias"], "bias"))
        elif self.method == "vector":
            self.register_buffer("scale", self._per_class(state["scale"], "scale"))
            self.register_buffer("bias", self._per_class(state["bias"], "bias"))
        elif self.method == "isotonic":
            self.classes = [int(c) for c in state["classes"]]
            self.steps = [len(xs) - 1 for xs in state["x_thresholds"]]
            for i, (xs, ys) in enumerate(zip(state["x_thresholds"], state["y_thresholds"])):
                x = torch.tensor(xs, dtype=torch.float32)
                y = torch.tensor(ys, dtype=torch.float32)
                self.register_buffer(f"x0_{i}", x[:-1])
                self.register_buffer(f"w_{i}", (x[1:] - x[:-1]).clamp_min(1e-12))
                self.register_buffer(f"dy_{i}", y[1:] - y[:-1])
                self.register_buffer(f"y0_{i}", y[:1])
        elif self.method != "none":
            raise CalibrationGraphError(f"unknown calibration method {self.method!r} in the checkpoint")

    def _per_class(self, values, name: str) -> torch.Tensor:
        v = torch.tensor([float(x) for x in values], dtype=torch.float32)
        if len(v) != self.num_classes:
            raise CalibrationGraphError(f"the {self.method} calibration has {len(v)} values of {name!r} but the model has "
                              f"{self.num_classes} classes")
        return v

    def _isotonic_column(self, p: torch.Tensor, i: int) -> torch.Tensor:
        x0, w, dy, y0 = (getattr(self, f"{n}_{i}") for n in ("x0", "w", "dy", "y0"))
        if self.steps[i] == 0:  # a single step point: a constant
            return y0.expand_as(p)
        ramps = ((p[:, None] - x0[None, :]) / w[None, :]).clamp(0, 1)
        return y0 + (ramps * dy[None, :]).sum(1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.method == "temperature":
            return torch.softmax(logits / self.temperature, dim=-1)
        if self.method == "bcts":
            return torch.softmax(logits / self.temperature + self.bias, dim=-1)
        if self.method == "vector":
            return torch.softmax(logits * self.scale + self.bias, dim=-1)
        if self.method == "platt":
            p1 = torch.sigmoid(self.ab[0] * (logits[:, 1] - logits[:, 0]) + self.ab[1])
            return torch.stack([1 - p1, p1], dim=1)
        probs = torch.softmax(logits, dim=-1)
        if self.method == "none":
            return probs
        cols = [probs[:, c] for c in range(self.num_classes)]
        for i, c in enumerate(self.classes):
            cols[c] = self._isotonic_column(probs[:, c], i)
        if self.num_classes == 2 and self.classes == [1]:
            return torch.stack([1 - cols[1], cols[1]], dim=1)
        out = torch.stack(cols, dim=1)
        total = out.sum(1, keepdim=True)
        return torch.where(total > 0, out / total.clamp_min(1e-30), probs)
