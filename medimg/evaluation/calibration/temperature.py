"""Temperature scaling (Guo et al. 2017): ``softmax(logits / T)``, one T fitted by maximum likelihood."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medimg.evaluation.calibration import scaling
from medimg.evaluation.calibration.base import Calibration
from medimg.evaluation.calibration.graph import AffineSoftmax
from medimg.evaluation.calibration.never_worse import never_worse


@dataclass(frozen=True, kw_only=True)
class Temperature(Calibration, method="temperature"):
    temperature: float = 1.0

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return (logits / float(self.temperature)).softmax(-1)

    def _module(self, num_classes: int) -> nn.Module:
        return AffineSoftmax(1.0 / float(self.temperature))

    def _parameters(self) -> str:
        return f"T = {self.temperature:.4g}"

    @classmethod
    def fit(cls, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> Temperature:
        """One T minimising the validation NLL; never above T = 1's NLL."""
        fitted = cls(temperature=scaling.lbfgs_temperature(logits, targets, max_iter))
        return never_worse(fitted, cls(), logits, targets, "temperature scaling")
