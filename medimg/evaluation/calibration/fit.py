"""The calibration a run keeps: the ``calibration`` settings fitted on the validation split's logits, with the
operating threshold of a binary task chosen on the calibrated probabilities."""

from __future__ import annotations

import logging

import torch

from medimg.config.evaluation import CalibrationSettings
from medimg.config.schema import as_dict
from medimg.evaluation.calibration.base import Calibration
from medimg.evaluation.calibration.selection import fit_calibration
from medimg.evaluation.calibration.threshold import choose_threshold

log = logging.getLogger(__name__)


def fit_settings(cal: CalibrationSettings, logits: torch.Tensor, targets: torch.Tensor) -> Calibration:
    """The method of ``cal`` fitted on ``logits`` / ``targets``; binary tasks also get the operating threshold of
    ``cal.threshold``."""
    cfg = as_dict(cal)
    num_classes = logits.shape[1]
    if cfg["method"] == "platt" and num_classes != 2:
        # reached after training: keep the run and calibrate anyway, rather than fail at the last step
        log.warning("calibration=platt is for binary tasks and this one has %d classes; using temperature scaling "
                    "instead (choose calibration=auto, bcts, temperature or isotonic)", num_classes)
        cfg["method"] = "temperature"
    fitted = fit_calibration(cfg["method"], logits, targets, int(cfg["max_iter"]), cfg["selection"])
    fitted = fitted.replace(fitted_on=f"validation split ({len(targets)} images)")
    if num_classes != 2:
        return fitted
    rule = cfg["threshold"]
    threshold = choose_threshold(fitted.probs(logits.double())[:, 1], targets, rule, cfg.get("target_sensitivity"))
    return fitted.replace(threshold=threshold, threshold_rule=(
        f"sensitivity >= {cfg['target_sensitivity']}" if rule == "target_sensitivity" else str(rule)))
