"""``calibration=none``: the plain softmax (an operating threshold may still be set for a binary model)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medimg.evaluation.calibration.base import Calibration
from medimg.evaluation.calibration.graph import AffineSoftmax


@dataclass(frozen=True, kw_only=True)
class Uncalibrated(Calibration, method="none"):
    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(-1)

    def _module(self, num_classes: int) -> nn.Module:
        return AffineSoftmax(1.0)

    @classmethod
    def fit(cls, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> Uncalibrated:
        return cls()
