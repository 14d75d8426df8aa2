"""Graph forms of the calibrations (``Calibration.as_module``): plain tensor operations that export to ONNX."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class AffineSoftmax(nn.Module):
    """``softmax(logits * scale + bias)``: the form of temperature (scale 1/T), BCTS and vector scaling, and of
    the plain softmax (scale 1, bias 0)."""

    def __init__(self, scale: float | Sequence[float], bias: float | Sequence[float] = 0.0):
        super().__init__()
        self.register_buffer("scale", torch.as_tensor(scale, dtype=torch.float32))
        self.register_buffer("bias", torch.as_tensor(bias, dtype=torch.float32))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits * self.scale + self.bias, dim=-1)
