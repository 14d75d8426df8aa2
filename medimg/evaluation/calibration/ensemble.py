"""The decision rule of a fold ensemble: the mean of its folds' calibrated probabilities (each fold's own
calibration applied to its own logits), at the mean of the folds' binary thresholds."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from medimg.evaluation.calibration.base import Calibration


@dataclass(frozen=True, kw_only=True)
class FoldEnsemble(Calibration):
    folds: int = 0

    method = "fold ensemble of calibrated probabilities"

    def _probs(self, logits: torch.Tensor) -> torch.Tensor:
        raise ValueError("a fold ensemble's probabilities are the mean of its folds' calibrated probabilities; "
                         "they are not a function of one model's logits")

    def _parameters(self) -> str:
        return f"{self.folds} folds"

    @classmethod
    def of(cls, calibrations: Sequence[Calibration]) -> FoldEnsemble:
        thresholds = [c.threshold for c in calibrations if c.threshold is not None]
        if not thresholds:
            return cls(folds=len(calibrations))
        return cls(folds=len(calibrations), threshold=float(np.mean(thresholds)),
                   threshold_rule="mean of the folds' thresholds")
