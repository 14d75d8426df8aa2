"""Vector scaling (Guo et al. 2017): ``softmax(scale * logits + bias)``, a scale and a bias per class."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from medimg.evaluation.calibration import scaling
from medimg.evaluation.calibration.base import Calibration, as_tensor, floats, short
from medimg.evaluation.calibration.graph import AffineSoftmax
from medimg.evaluation.calibration.never_worse import never_worse


@dataclass(frozen=True, kw_only=True)
class VectorScaling(Calibration, method="vector"):
    scale: tuple[float, ...] = ()
    bias: tuple[float, ...] = ()

    def per_class(self) -> dict[str, Sequence[float]]:
        return {"scale": self.scale, "bias": self.bias}

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits * as_tensor(self.scale, logits) + as_tensor(self.bias, logits)).softmax(-1)

    def _module(self, num_classes: int) -> nn.Module:
        return AffineSoftmax(floats(self.scale), floats(self.bias))

    def _parameters(self) -> str:
        return f"scale = [{short(self.scale)}], bias = [{short(self.bias)}]"

    @classmethod
    def fit(cls, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> VectorScaling:
        """(scale, bias) minimising the validation NLL; never above the uncalibrated NLL."""
        scale, bias = scaling.lbfgs_vector(logits, targets, max_iter)
        c = logits.shape[1]
        return never_worse(cls(scale=floats(scale), bias=floats(bias)), cls(scale=(1.0,) * c, bias=(0.0,) * c),
                           logits, targets, "vector scaling")
