"""The operating threshold of a binary classifier, chosen on validation probabilities of the positive class.

The positive class is class index 1 (the second class name). A case is called positive when
``P(class 1) >= threshold``. Rules (``calibration.threshold``):

* ``youden``: maximise Youden's J = sensitivity + specificity - 1 over the ROC curve's thresholds
  (ties: the highest threshold, i.e. the most specific one);
* ``target_sensitivity``: the highest threshold whose validation sensitivity is at least
  ``calibration.target_sensitivity`` (the most specific operating point that reaches the target);
* a number in (0, 1): that threshold, fixed.
"""

from __future__ import annotations

import logging

import torch
from torchmetrics.functional.classification import binary_roc

from medimg.errors import ConfigError

log = logging.getLogger(__name__)


def choose_threshold(p_positive: torch.Tensor, targets: torch.Tensor, rule: str | float = "youden",
                     target_sensitivity: float | None = None) -> float:
    """The threshold on ``P(class 1)`` picked by ``rule`` on validation predictions."""
    if not isinstance(rule, str):
        t = float(rule)
        if not 0.0 < t < 1.0:
            raise ConfigError(f"calibration.threshold={t} must lie in (0, 1), or be youden / target_sensitivity")
        return t
    if rule not in ("youden", "target_sensitivity"):
        raise ConfigError(f"unknown calibration.threshold={rule!r}; choose youden, target_sensitivity or a number")
    y = targets.long().cpu()
    p = p_positive.double().cpu()
    if y.min() == y.max():
        log.warning("the validation split has only class %d: cannot choose an operating threshold by %s; using 0.5",
                    int(y[0]), rule)
        return 0.5
    fpr, tpr, thr = binary_roc(p, y)
    # index 0 is torchmetrics' artificial start point (nothing called positive); the rest are score values
    fpr, tpr, thr = fpr[1:], tpr[1:], thr[1:]
    if rule == "youden":
        return float(thr[int(torch.argmax(tpr - fpr))])
    if target_sensitivity is None or not 0.0 < float(target_sensitivity) <= 1.0:
        raise ConfigError(f"calibration.threshold=target_sensitivity needs calibration.target_sensitivity in (0, 1], "
                         f"got {target_sensitivity}")
    ok = torch.nonzero(tpr >= float(target_sensitivity) - 1e-12).flatten()
    return float(thr[int(ok[0])])  # thresholds decrease, so the first one reaching the target is the highest

