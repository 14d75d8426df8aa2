"""The settings of calibration (fitted on validation), its method selection, the conformal prediction sets, the
referral of images the model is not sure of (selective prediction) and what an evaluation reports beyond the
metrics: the ``calibration`` and ``evaluation`` config groups."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medimg.config.schema import one_of, positive, require
from medimg.names import CALIBRATION_FITS, CALIBRATION_METHODS, CAM_METHODS, CONFORMAL_SCORES


@dataclass(frozen=True)
class SelectionSettings:
    candidates: list[str]         # the fits calibration=auto compares
    folds: int                    # cross-validation folds of the validation split
    seed: int                     # seeds the fold assignment

    def check(self, where: str) -> None:
        require(len(self.candidates) > 0, f"{where}.candidates", "must name at least one method")
        for c in self.candidates:
            one_of(c, CALIBRATION_FITS, f"{where}.candidates")
        require(self.folds >= 2, f"{where}.folds", f"cross-validation needs at least 2 folds, got {self.folds}")


@dataclass(frozen=True)
class CalibrationSettings:
    method: str
    threshold: Any                # youden | target_sensitivity | a number in (0, 1)
    target_sensitivity: float
    max_iter: int
    selection: SelectionSettings | None  # calibration=auto: candidates, folds, seed

    def check(self, where: str) -> None:
        one_of(self.method, CALIBRATION_METHODS, f"{where}.method")
        positive(self.max_iter, f"{where}.max_iter")
        require(self.method != "auto" or self.selection is not None, f"{where}.selection",
                "calibration.method=auto needs the candidates, folds and seed keys (calibration=auto has them)")
        ok = self.threshold in ("youden", "target_sensitivity") or (
            isinstance(self.threshold, float | int) and 0 < self.threshold < 1)
        require(ok, f"{where}.threshold", f"must be youden, target_sensitivity or a number in (0, 1), "
                                          f"got {self.threshold!r}")
        require(0 < self.target_sensitivity <= 1, f"{where}.target_sensitivity", "must be in (0, 1]")


@dataclass(frozen=True)
class ConformalSettings:
    alpha: float | None           # the sets' error rate (null = no sets)
    score: str                    # lac | aps | raps
    mondrian: bool                # one threshold per class
    randomized: bool = False      # aps/raps: the label that crosses the threshold is kept with a seeded draw

    def check(self, where: str) -> None:
        if self.alpha is not None:
            require(0 < self.alpha < 1, f"{where}.alpha", f"must be in (0, 1) (0.1 = 90% coverage) or null, "
                                                         f"got {self.alpha!r}")
        one_of(self.score, CONFORMAL_SCORES, f"{where}.score")
        require(not (self.randomized and self.score == "lac"), f"{where}.randomized",
                "lac sets are not randomised; randomized=true applies to score=aps or raps")


@dataclass(frozen=True)
class SelectiveSettings:
    target: float | None          # the accuracy the images not referred must reach on validation (null = no referral)
    level: float                  # the one-sided Clopper-Pearson level of the lower bound that must reach it

    def check(self, where: str) -> None:
        if self.target is not None:
            require(0 < self.target < 1, f"{where}.target", f"must be an accuracy in (0, 1), e.g. 0.95, or null "
                                                           f"(no referral), got {self.target!r}")
        require(0 < self.level < 1, f"{where}.level", f"must be in (0, 1), e.g. 0.95, got {self.level!r}")


@dataclass(frozen=True)
class EvaluationSettings:
    bootstrap_resamples: int
    interval_level: float
    bootstrap_seed: int
    subgroup_metrics: list[str]
    subgroup_min_images: int
    gallery_per_class: int
    gallery_method: str
    gallery_layer: str | None
    figures: bool                 # the report's figures (false: metrics, tables and text only)
    conformal: ConformalSettings
    selective: SelectiveSettings

    def check(self, where: str) -> None:
        require(0 < self.interval_level < 1, f"{where}.interval_level", "must be in (0, 1), e.g. 0.95")
        require(self.bootstrap_resamples >= 0, f"{where}.bootstrap_resamples", "must be >= 0")
        one_of(self.gallery_method, CAM_METHODS, f"{where}.gallery_method")
