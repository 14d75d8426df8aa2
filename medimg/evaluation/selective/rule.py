"""``ReferralRule``: refer an image to a clinician when the model is not confident enough to answer for it.

An image is **referred** when its confidence (the calibrated probability of its decided class,
``curve.confidences``) is below ``threshold``; the rest keep the model's answer. ``fit`` chooses the threshold
on the validation split, and it is demanding about it: the ``target`` accuracy must be met not by the accuracy
of the validation images kept but by its one-sided Clopper-Pearson (exact binomial) lower bound at ``level``.
With 40 validation images kept, all of them right, the bound at level 0.95 is 0.928: a target of 0.95 needs more
evidence, not luck. The threshold starts where that bound is highest and is lowered, one validation confidence
at a time (a tie group at once), while the bound stays at or above the target; the first step that takes it
below ends the search. Taking instead the lowest threshold that passes anywhere would step past such a dip onto
a lucky stretch: in simulations of calibrated models (tests/test_selective.py) that choice fell short of the
target on test up to one time in ten at level 0.95, this one about one time in twenty. That is a measured rate,
not a guarantee (the bound is not corrected for looking at several thresholds). The threshold lies halfway between
the confidence of the least sure validation image kept and the next one below (0 when none is referred), so a
confidence computed in another precision (onnxruntime, float32) decides a validation image the same way.

The target is an accuracy for every task, binary ones included. A binary model's operating threshold already
holds its sensitivity (``calibration.threshold=target_sensitivity``); referral asks another question, whether
this image's decision can be trusted, and a referred positive is not a missed one: a clinician reads it. The
sensitivity of the images kept would be judged on the kept positives alone (a few dozen on most validation
splits), and confidence does not order images by it, so a threshold chosen for it would be unstable.

A target that no threshold reaches is a ConfigError that names the highest reachable target. Stored in a
checkpoint (and model.onnx's metadata) as a plain dict (``to_dict`` / ``from_dict``)::

    {"target": 0.95, "level": 0.95, "threshold": 0.83, "kept": 312, "images": 400, "kept_accuracy": 0.974,
     "kept_bound": 0.952, "fitted_on": "validation split (400 images)"}
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import beta

from medimg.errors import CheckpointError, ConfigError
from medimg.evaluation.selective.curve import tie_groups

REFIT = "fit it again on the validation split (python -m medimg.evaluate ckpt_path=<ckpt> recalibrate=true)"


def lower_bound(right: np.ndarray, kept: np.ndarray, level: float) -> np.ndarray:
    """The one-sided Clopper-Pearson lower bound at ``level`` of an accuracy of ``right`` of ``kept`` (0 for
    none right): the accuracy below which ``right`` or more would have come with probability ``1 - level``."""
    right, kept = np.asarray(right, np.float64), np.asarray(kept, np.float64)
    safe = np.where(right > 0, right, 1.0)
    return np.where(right > 0, beta.ppf(1 - level, safe, kept - right + 1), 0.0)


def check_settings(target: float, level: float) -> None:
    for name, value in (("target", target), ("level", level)):
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1:
            raise ConfigError(f"evaluation.selective.{name} must be a number in (0, 1), got {value!r}")


@dataclass(frozen=True, kw_only=True)
class ReferralRule:
    """A fitted rule (see the module doc); ``fit`` makes one, ``refer`` applies it."""

    target: float  # the accuracy the images kept must reach on validation (by the lower bound)
    level: float  # the one-sided level of that Clopper-Pearson lower bound
    threshold: float  # refer when the confidence is below it; 0: refer none
    kept: int | None = None  # validation images kept, of ``images``
    images: int | None = None
    kept_accuracy: float | None = None  # their accuracy ...
    kept_bound: float | None = None  # ... and its lower bound
    fitted_on: str | None = None

    def __post_init__(self):
        check_settings(self.target, self.level)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, int | float) or not 0 <= self.threshold <= 1:
            raise ConfigError(f"a referral threshold is a confidence in [0, 1], got {self.threshold!r}")

    @classmethod
    def fit(cls, conf: np.ndarray, wrong: np.ndarray, target: float, level: float = 0.95,
            fitted_on: str = "validation split") -> ReferralRule:
        """The rule for validation confidences ``conf`` ``(N,)`` and errors ``wrong`` ``(N,)``: from the threshold
        where the kept images' accuracy has its highest lower bound at ``level``, the lowest reached while that
        bound stays at or above ``target`` (the module doc)."""
        check_settings(target, level)
        conf, wrong = np.asarray(conf, np.float64), np.asarray(wrong, bool)
        if conf.ndim != 1 or wrong.shape != conf.shape or not len(conf):
            raise ValueError(f"one confidence and one error flag per image needed, got {conf.shape}, {wrong.shape}")
        order, starts = tie_groups(conf)
        ends = np.append(starts[1:], len(conf))  # keeping the groups up to g keeps ends[g] images
        right = np.cumsum(~wrong[order])[ends - 1]
        bound = lower_bound(right, ends, level)
        peak, where = int(np.argmax(bound)), f"{fitted_on} ({len(conf)} images)"
        if bound[peak] < target:
            raise ConfigError(_unreachable(target, level, where, bound, right, ends))
        short = np.flatnonzero(bound[peak:] < target)
        g = peak + int(short[0]) - 1 if len(short) else len(bound) - 1
        ranked = conf[order]
        threshold = 0.0 if g == len(starts) - 1 else float((ranked[starts[g]] + ranked[ends[g]]) / 2)
        return cls(target=float(target), level=float(level), threshold=threshold, kept=int(ends[g]),
                   images=len(conf), kept_accuracy=float(right[g] / ends[g]), kept_bound=float(bound[g]),
                   fitted_on=where)

    def refer(self, conf: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: the images of confidence ``conf`` to refer."""
        return np.asarray(conf, np.float64) < self.threshold

    def reason(self, confidence: float) -> str:
        """Why an image of ``confidence`` is referred or not, in words."""
        value, limit = _apart(float(confidence), self.threshold)
        if confidence < self.threshold:
            return f"refer: the model is not confident enough (confidence {value} < {limit})"
        return f"not referred: confidence {value} >= {limit}"

    def describe(self) -> str:
        """One line for logs and reports."""
        reach = f"accuracy {self.target:g} by its {self.level:.0%} lower bound"
        if self.threshold > 0:
            text = (f"refer when the confidence (the probability of the decided class) is below {self.threshold:.4g}: "
                    f"the validation images kept reach {reach}")
        else:
            text = f"refer none: every validation image kept reaches {reach}"
        if self.kept is not None and self.images:
            text += (f" ({self.kept} of {self.images} kept, {1 - self.kept / self.images:.1%} referred: accuracy "
                     f"{self.kept_accuracy:.3f}, lower bound {self.kept_bound:.3f})")
        return text + (f", fitted on {self.fitted_on}" if self.fitted_on else "")

    def to_dict(self) -> dict[str, Any]:
        """Plain types only, as a checkpoint and ONNX metadata store it."""
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(state: Mapping[str, Any] | ReferralRule) -> ReferralRule:
        """The rule stored as ``state``; an unknown key or a value that does not fit is a CheckpointError."""
        if isinstance(state, ReferralRule):
            return state
        unknown = sorted(set(state) - {f.name for f in dataclasses.fields(ReferralRule)})
        if unknown:
            raise CheckpointError(f"the checkpoint's referral rule has keys {unknown} that this version does not "
                                  f"know; {REFIT}")
        try:
            return ReferralRule(**dict(state))
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint's referral rule cannot be read ({e}); {REFIT}") from None


def _apart(a: float, b: float) -> tuple[str, str]:
    """``a`` and ``b`` with the fewest significant digits (at least 3) that tell them apart."""
    for digits in range(3, 10):
        x, y = f"{a:.{digits}g}", f"{b:.{digits}g}"
        if x != y or a == b:
            return x, y
    return f"{a!r}", f"{b!r}"


def _unreachable(target: float, level: float, where: str, bound: np.ndarray, right: np.ndarray,
                 kept: np.ndarray) -> str:
    best = int(np.argmax(bound))
    highest = math.floor(float(bound[best]) * 1000) / 1000
    return (f"evaluation.selective.target={target:g} is out of reach on the {where}: at no confidence threshold do "
            f"the images kept reach it by the {level:.0%} lower bound of their accuracy; the best is "
            f"{float(bound[best]):.3f}, keeping the {int(kept[best])} most confident (accuracy "
            f"{right[best] / kept[best]:.3f}). Set evaluation.selective.target to at most {highest:g}, lower "
            f"evaluation.selective.level, or validate on more images")
