"""Bias-corrected temperature scaling (Alexandari et al. 2020): ``softmax(logits / T + bias)``.

The per-class bias absorbs a shift of the class priors, such as the one class-weighted training puts into the
logits (a weight w_c adds about log w_c to class c's logit).
"""

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
class BCTS(Calibration, method="bcts"):
    temperature: float = 1.0
    bias: tuple[float, ...] = ()

    def per_class(self) -> dict[str, Sequence[float]]:
        return {"bias": self.bias}

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits / float(self.temperature) + as_tensor(self.bias, logits)).softmax(-1)

    def _module(self, num_classes: int) -> nn.Module:
        return AffineSoftmax(1.0 / float(self.temperature), floats(self.bias))

    def _parameters(self) -> str:
        return f"T = {self.temperature:.4g}, bias = [{short(self.bias)}]"

    @classmethod
    def fit(cls, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> BCTS:
        """(T, bias) minimising the validation NLL; never above the uncalibrated NLL."""
        t, bias = scaling.lbfgs_bcts(logits, targets, max_iter)
        identity = cls(temperature=1.0, bias=(0.0,) * logits.shape[1])
        return never_worse(cls(temperature=t, bias=floats(bias)), identity, logits, targets,
                           "bias-corrected temperature scaling")
