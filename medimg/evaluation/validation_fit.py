"""What a model gets fitted on the validation split after training, and stores beside its weights in best.ckpt
(and model.onnx's metadata): the calibration with the binary operating threshold (``calibration`` config group),
then on its calibrated probabilities the conformal prediction-set rule (``evaluation.conformal``) and the
referral rule (``evaluation.selective``). Used by ``medimg.train`` after the phases and by ``medimg.evaluate
recalibrate=true``.

A validation split that cannot support a rule (too few images for the conformal alpha, a referral target out of
reach) is logged as a warning and gives no rule: the run keeps what it trained, and its predictions go without
sets or referrals.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import NamedTuple, TypeVar

import lightning as L
import torch

from medimg.config.evaluation import CalibrationSettings, ConformalSettings, SelectiveSettings
from medimg.errors import ConfigError
from medimg.evaluation.calibration import Calibration, fit_settings
from medimg.evaluation.conformal import Conformal
from medimg.evaluation.predictions import collect_outputs
from medimg.evaluation.selective import ReferralRule, confidences

log = logging.getLogger(__name__)
Rule = TypeVar("Rule", Conformal, ReferralRule)


class ValidationFit(NamedTuple):
    calibration: Calibration
    conformal: Conformal | None  # the prediction-set rule (None: off, or the split was too small)
    referral: ReferralRule | None  # the referral rule (None: off, or its target out of reach)


def fit_on_validation(trainer: L.Trainer, model, dm, cal: CalibrationSettings, sets: ConformalSettings | None = None,
                      selective: SelectiveSettings | None = None) -> ValidationFit:
    """Calibrate ``model`` on the validation split, and fit the conformal rule of ``sets`` and the referral rule
    of ``selective`` on its calibrated probabilities (all ranks take part; all get the same result)."""
    outputs = collect_outputs(trainer, model, dm.val_dataloader(), expected_rows=len(dm.split_table("val")))
    logits = outputs.logits[0]
    calibration = fit_settings(cal, logits, outputs.targets)
    log.info("calibration: %s", calibration.describe())
    probs = calibration.probs(logits.double())
    return ValidationFit(calibration, fit_conformal(sets, probs, outputs.targets),
                         fit_referral(selective, probs, calibration.decide(probs), outputs.targets))


def fit_conformal(sets: ConformalSettings | None, probs: torch.Tensor, targets: torch.Tensor) -> Conformal | None:
    """The conformal rule of ``sets`` fitted on validation probabilities; None without one. A validation split
    too small for its alpha is logged as a warning (the run keeps what it trained) and gives no sets."""
    if sets is None or sets.alpha is None:
        return None
    return fitted_or_none(lambda: Conformal.fit(
        probs, targets, sets.score, sets.alpha, sets.mondrian, randomized=sets.randomized,
        fitted_on="the validation split, the images the calibrator was fitted on"), "conformal prediction sets")


def fit_referral(selective: SelectiveSettings | None, probs: torch.Tensor, decisions: torch.Tensor,
                 targets: torch.Tensor) -> ReferralRule | None:
    """The referral rule of ``selective`` fitted on validation probabilities and decisions; None without a
    target. A target no threshold reaches on validation is logged as a warning naming the highest one that is
    (the run keeps what it trained) and gives no referrals."""
    if selective is None or selective.target is None:
        return None
    conf = confidences(probs, decisions)
    wrong = (torch.as_tensor(decisions).cpu() != targets.cpu()).numpy()
    return fitted_or_none(lambda: ReferralRule.fit(conf, wrong, selective.target, selective.level,
                                                   fitted_on="validation split"), "referral")


def fitted_or_none(fit: Callable[[], Rule], what: str) -> Rule | None:
    """``fit()``, logged; None with a warning when the validation split cannot support it (the run keeps what
    it trained, and its predictions go without that rule)."""
    try:
        rule = fit()
    except ConfigError as e:
        log.warning("no %s: %s", what, e)
        return None
    log.info("%s: %s", what, rule.describe())
    return rule
