"""The rule every maximum-likelihood calibration fit follows: keep the uncalibrated model when the fit does
not lower the validation NLL, and record the NLL before and after."""

from __future__ import annotations

import logging

import numpy as np
import torch

from medimg.evaluation.calibration.base import Calibration
from medimg.evaluation.metrics import nll

log = logging.getLogger(__name__)


def calibrated_nll(calibration: Calibration, logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean negative log-likelihood of ``targets`` under ``calibration``'s probabilities (``metrics.nll``)."""
    return nll(calibration.probs(logits.detach().double().cpu()), targets.detach().long().cpu())


def with_nll(fitted: Calibration, before: float, logits: torch.Tensor, targets: torch.Tensor) -> Calibration:
    return fitted.replace(val_nll_before=before, val_nll_after=calibrated_nll(fitted, logits, targets))


def never_worse(fitted: Calibration, identity: Calibration, logits: torch.Tensor, targets: torch.Tensor,
                name: str) -> Calibration:
    """``fitted`` with its validation NLL before/after; ``identity`` (the same method with parameters that leave
    the softmax unchanged) when the fit does not lower the validation NLL."""
    before = calibrated_nll(identity, logits, targets)
    after = calibrated_nll(fitted, logits, targets)
    if not np.isfinite(after) or after > before:
        log.warning("%s did not lower the validation NLL (%.4f -> %.4f); keeping the uncalibrated model",
                    name, before, after)
        fitted, after = identity, before
    return fitted.replace(val_nll_before=before, val_nll_after=after)
