"""Platt scaling, binary: ``P(class 1) = sigmoid(a * (z1 - z0) + b)``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from medimg.errors import CheckpointError
from medimg.evaluation.calibration import scaling
from medimg.evaluation.calibration.base import Calibration
from medimg.evaluation.calibration.never_worse import never_worse


def require_binary(num_classes: int, error: type[Exception] = ValueError) -> None:
    if num_classes != 2:
        raise error(f"platt calibration is for binary tasks; this model has {num_classes} classes. "
                    "Use calibration=temperature, bcts or isotonic.")


class PlattLayer(nn.Module):
    def __init__(self, a: float, b: float):
        super().__init__()
        self.register_buffer("ab", torch.tensor([float(a), float(b)]))

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        p1 = torch.sigmoid(self.ab[0] * (logits[:, 1] - logits[:, 0]) + self.ab[1])
        return torch.stack([1 - p1, p1], dim=1)


@dataclass(frozen=True, kw_only=True)
class Platt(Calibration, method="platt"):
    a: float = 1.0
    b: float = 0.0

    def check_classes(self, num_classes: int) -> None:
        require_binary(num_classes, CheckpointError)

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        p1 = torch.sigmoid(float(self.a) * (logits[:, 1] - logits[:, 0]) + float(self.b))
        return torch.stack([1 - p1, p1], dim=1)

    def _module(self, num_classes: int) -> nn.Module:
        return PlattLayer(self.a, self.b)

    def _parameters(self) -> str:
        return f"a = {self.a:.4g}, b = {self.b:.4g}"

    @classmethod
    def fit(cls, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> Platt:
        """(a, b) minimising the validation NLL; never above the NLL of a = 1, b = 0 (the softmax)."""
        require_binary(logits.shape[1])
        a, b = scaling.lbfgs_platt(logits, targets, max_iter)
        return never_worse(cls(a=a, b=b), cls(), logits, targets, "Platt scaling")
