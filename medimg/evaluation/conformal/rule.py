"""``Conformal``: a fitted split-conformal rule that turns (calibrated) class probabilities into prediction sets
holding the true class with probability at least ``1 - alpha`` on exchangeable images.

Stored in a checkpoint as a plain dict (``to_dict`` / ``from_dict``, read with ``torch.load(weights_only=True)``)::

    {"score": "aps", "alpha": 0.1, "quantile": 0.873, "mondrian": false, "penalty": 0.0, "k_reg": 0,
     "randomized": false, "seed": 0, "fitted_on": "validation split (432 images)",
     "calibration_scores": [0.12, ...], "calibration_labels": [0, ...]}

``calibration_scores`` (each calibration image's score of its true label, ``calibration_labels`` its class) let
``at(alpha)`` refit the threshold at another alpha without the images: the coverage/size-against-alpha figure
of any evaluation, on any site, comes from the stored rule. ONNX metadata carries the rule without them.

``mondrian``: one threshold per class, fitted on that class's calibration images, so the guarantee holds for
each class separately (class-conditional coverage); ``quantile`` is then a list. Sets are deterministic unless
``randomized`` (APS/RAPS only): the label that crosses the threshold is included (MAPIE's
``include_last_label=True``). Too few calibration images for ``alpha`` is a ConfigError that names the number
needed, not an all-classes rule: a set that is always every class says nothing, and a metric computed from it
would look like perfect coverage.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from medimg.errors import CheckpointError, ConfigError
from medimg.evaluation.conformal.raps import tune_raps
from medimg.evaluation.conformal.scores import (
    SCORES,
    TOLERANCE,
    conformal_quantile,
    label_scores,
    needed_images,
    true_scores,
    uniforms,
)

REFIT = "fit the conformal sets again on the validation split (Conformal.fit) and store the new value"


def check_settings(score: str, alpha: float) -> None:
    """The settings check that runs before any work: a known score, ``alpha`` in (0, 1)."""
    if score not in SCORES:
        raise ConfigError(f"conformal score must be one of {', '.join(SCORES)}, got {score!r}")
    if not isinstance(alpha, int | float) or isinstance(alpha, bool) or not 0 < alpha < 1:
        raise ConfigError(f"conformal alpha is the error rate the sets allow and must be in (0, 1) "
                          f"(0.1 for 90% coverage), got {alpha!r}")


@dataclass(frozen=True, kw_only=True)
class Conformal:
    """A fitted rule (see the module doc); ``fit`` makes one, ``sets`` applies it."""

    score: str = "lac"
    alpha: float = 0.1
    quantile: float | tuple[float, ...]  # the threshold, or one per class (mondrian)
    mondrian: bool = False
    penalty: float = 0.0  # RAPS's lambda
    k_reg: int = 0  # RAPS: labels ranked after the k_reg-th are penalised
    randomized: bool = False
    seed: int = 0  # the uniform draws of randomised sets
    fitted_on: str | None = None
    calibration_scores: tuple[float, ...] | None = None  # the calibration images' scores of their true labels
    calibration_labels: tuple[int, ...] | None = None  # and their classes

    def __post_init__(self):
        check_settings(self.score, self.alpha)
        if (self.calibration_scores is None) != (self.calibration_labels is None) or (
                self.calibration_scores is not None and len(self.calibration_scores) != len(self.calibration_labels)):
            raise ConfigError("a rule's calibration scores and labels come together, one label per score")
        if self.mondrian != isinstance(self.quantile, tuple):
            raise ConfigError("a mondrian rule has one threshold per class, any other one threshold")
        if self.score != "raps" and (self.penalty or self.k_reg):
            raise ConfigError(f"penalty and k_reg are settings of raps, not of {self.score}")
        if self.penalty < 0 or self.k_reg < 0 or int(self.k_reg) != self.k_reg:
            raise ConfigError(f"raps needs penalty >= 0 and a whole k_reg >= 0, got {self.penalty}, {self.k_reg}")
        if self.randomized and self.score == "lac":
            raise ConfigError("lac sets are not randomised; randomized applies to aps and raps")

    # ------------------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, probs: torch.Tensor, targets: torch.Tensor, score: str = "lac", alpha: float = 0.1,
            mondrian: bool = False, *, penalty: float | None = None, k_reg: int | None = None,
            randomized: bool = False, seed: int = 0, fitted_on: str = "calibration split",
            tune_fraction: float = 0.2) -> Conformal:
        """The rule fitted on calibration ``probs`` ``(N, C)`` and ``targets`` ``(N,)``. RAPS without ``penalty``
        or ``k_reg`` tunes the missing ones on a held-out ``tune_fraction`` (``raps.tune_raps``)."""
        check_settings(score, alpha)
        probs = _check_probs(probs)
        targets = _check_targets(targets, probs)
        n = len(targets)
        where = f"{fitted_on} ({n} images)"
        if score == "raps" and (penalty is None or k_reg is None):
            penalty, k_reg, rest, tuned = tune_raps(probs, targets, alpha, penalty, k_reg, tune_fraction, seed)
            rest_t = torch.as_tensor(rest, device=probs.device)
            probs, targets = probs[rest_t], targets[rest_t]
            where = f"{fitted_on} ({n} images: {tuned} to tune penalty and k_reg, {n - tuned} for the threshold)"
        penalty, k_reg = float(penalty or 0.0), int(k_reg or 0)  # set for lac or aps: a ConfigError below
        u = uniforms(seed, 0, len(targets)) if randomized else None
        scores = true_scores(probs, targets, score, penalty, k_reg, u)
        quantile = (_class_quantiles(scores, targets, probs.shape[1], alpha, fitted_on) if mondrian
                    else _quantile(scores, alpha, f"the {fitted_on}"))
        return cls(score=score, alpha=float(alpha), quantile=quantile, mondrian=mondrian, penalty=penalty,
                   k_reg=k_reg, randomized=randomized, seed=seed, fitted_on=where,
                   calibration_scores=tuple(scores.cpu().tolist()), calibration_labels=tuple(targets.cpu().tolist()))

    def at(self, alpha: float, num_classes: int | None = None) -> Conformal:
        """The same rule with its threshold refitted at ``alpha`` from the stored calibration scores (RAPS keeps
        its penalty and k_reg); a ConfigError when the rule holds no scores or too few for ``alpha``."""
        check_settings(self.score, alpha)
        if self.calibration_scores is None:
            raise ConfigError(f"this conformal rule holds no calibration scores, so it cannot be refitted at alpha "
                              f"{alpha:g}; {REFIT}")
        scores = torch.tensor(self.calibration_scores, dtype=torch.float64)
        labels = torch.tensor(self.calibration_labels, dtype=torch.long)
        if self.mondrian:
            classes = num_classes or len(self.quantile)
            quantile = _class_quantiles(scores, labels, classes, alpha, "calibration split")
        else:
            quantile = _quantile(scores, alpha, "the calibration split")
        return dataclasses.replace(self, alpha=float(alpha), quantile=quantile)

    # ------------------------------------------------------------------------------ using it
    def thresholds(self, num_classes: int) -> torch.Tensor:
        """``(C,)`` float64: each class's threshold (the same for all without mondrian)."""
        if not self.mondrian:
            return torch.full((num_classes,), float(self.quantile), dtype=torch.float64)
        if len(self.quantile) != num_classes:
            raise CheckpointError(f"the conformal rule has thresholds for {len(self.quantile)} classes but the model "
                                  f"has {num_classes}; {REFIT}")
        return torch.tensor(self.quantile, dtype=torch.float64)

    def sets(self, probs: torch.Tensor, seed: int | None = None) -> torch.Tensor:
        """``(N, C)`` bool: the labels in each image's set. Randomised sets draw one uniform per image from
        ``seed`` (default: the rule's), so they depend on the image's place in ``probs``."""
        probs = _check_probs(probs)
        u = None
        if self.randomized:
            u = uniforms(self.seed if seed is None else seed, 1, len(probs)).to(probs.device)
        scores = label_scores(probs, self.score, self.penalty, self.k_reg, u)
        return scores <= self.thresholds(probs.shape[1]).to(probs.device) + TOLERANCE

    def named_sets(self, probs: torch.Tensor, class_names: Sequence[str]) -> list[list[str]]:
        """Each image's set as class names, the most probable first."""
        return set_names(self.sets(probs), probs, class_names)

    def describe(self) -> str:
        """One line for logs and reports."""
        target = f"{100 * (1 - self.alpha):.4g}% coverage"
        if self.mondrian:
            parts = [f"{self.score.upper()} sets at {target} per class (Mondrian)",
                     "thresholds " + ", ".join(f"{q:.3g}" for q in self.quantile)]
        else:
            parts = [f"{self.score.upper()} sets at {target}", f"threshold {self.quantile:.3g}"]
        if self.score == "raps":
            parts.append(f"penalty {self.penalty:g} per rank after {self.k_reg}")
        if self.score != "lac":
            parts.append(f"randomised (seed {self.seed})" if self.randomized else "crossing label included")
        if self.fitted_on:
            parts.append(f"fitted on {self.fitted_on}")
        return ", ".join(parts)

    # ------------------------------------------------------------------------------ storing it
    def to_dict(self, scores: bool = True) -> dict[str, Any]:
        """Plain types only (lists for mondrian thresholds and the calibration scores), as a checkpoint stores
        it; ``scores=False`` leaves the calibration scores out (ONNX metadata: the rule at its own alpha)."""
        out = dataclasses.asdict(self)
        if self.mondrian:
            out["quantile"] = [float(q) for q in self.quantile]
        for key in ("calibration_scores", "calibration_labels"):
            out[key] = list(out[key]) if scores and out[key] is not None else None
        return out

    @staticmethod
    def from_dict(state: Mapping[str, Any] | Conformal) -> Conformal:
        """The rule stored as ``state``; an unknown score or key, or a value that does not fit, is a
        CheckpointError that says how to refit."""
        if isinstance(state, Conformal):
            return state
        state = dict(state)
        if state.get("score", "lac") not in SCORES:
            raise CheckpointError(f"the checkpoint's conformal rule names the score {state['score']!r}, which is not "
                                  f"one of {', '.join(SCORES)}; {REFIT}")
        unknown = sorted(set(state) - {f.name for f in dataclasses.fields(Conformal)})
        if unknown:
            raise CheckpointError(f"the checkpoint's conformal rule has keys {unknown} that this version does not "
                                  f"know; {REFIT}")
        if isinstance(state.get("quantile"), list | tuple):
            state["quantile"] = tuple(float(q) for q in state["quantile"])
        for key, kind in (("calibration_scores", float), ("calibration_labels", int)):
            if isinstance(state.get(key), list | tuple):
                state[key] = tuple(kind(v) for v in state[key])
        try:
            return Conformal(**state)
        except (TypeError, ValueError) as e:
            raise CheckpointError(f"the checkpoint's conformal rule cannot be read ({e}); {REFIT}") from None


def set_names(sets: torch.Tensor, probs: torch.Tensor, class_names: Sequence[str]) -> list[list[str]]:
    """Each row of ``sets`` ``(N, C)`` as class names, in decreasing probability."""
    if sets.shape[1] != len(class_names):
        raise ValueError(f"{len(class_names)} class names for sets of {sets.shape[1]} classes")
    order = probs.double().argsort(dim=1, descending=True, stable=True).cpu()
    mask = sets.cpu()
    return [[class_names[int(c)] for c in row if mask[i, c]] for i, row in enumerate(order)]


def _check_probs(probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    p = torch.as_tensor(probs)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ValueError(f"probabilities must have shape (N, C) with C >= 2, got {tuple(p.shape)}")
    return p


def _check_targets(targets: torch.Tensor | np.ndarray, probs: torch.Tensor) -> torch.Tensor:
    y = torch.as_tensor(targets).long().to(probs.device)
    if y.shape != (len(probs),) or (len(y) and not (0 <= int(y.min()) and int(y.max()) < probs.shape[1])):
        raise ValueError(f"targets must be {len(probs)} class indices below {probs.shape[1]}, got shape "
                         f"{tuple(y.shape)}")
    return y


def _too_few(alpha: float, what: str) -> str:
    return (f"conformal sets at alpha {alpha:g} need at least {needed_images(alpha)} calibration images{what}; "
            f"with fewer every set would be all classes. Use more calibration images or a larger alpha")


def _quantile(scores: torch.Tensor, alpha: float, where: str) -> float:
    if len(scores) < needed_images(alpha):
        raise ConfigError(_too_few(alpha, f", but {where} has {len(scores)}") +
                          f" (at least {1 / (len(scores) + 1):.3g} for these)")
    return conformal_quantile(scores, alpha)


def _class_quantiles(scores: torch.Tensor, targets: torch.Tensor, num_classes: int, alpha: float,
                     where: str) -> tuple[float, ...]:
    counts = torch.bincount(targets, minlength=num_classes).tolist()
    short = {k: n for k, n in enumerate(counts) if n < needed_images(alpha)}
    if short:
        listed = ", ".join(f"class {k}: {n}" for k, n in short.items())
        raise ConfigError(_too_few(alpha, f" of each class for mondrian sets, but the {where} has {listed}") +
                          f" (at least {1 / (min(short.values()) + 1):.3g} for these)")
    return tuple(conformal_quantile(scores[targets == k], alpha) for k in range(num_classes))
