"""Settings of the other commands (evaluate, predict, export, explain, download), read strictly like a run's.

Each dataclass mirrors its YAML file in conf/; the YAML holds the defaults and a comment per key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from medimg.config.dataset import DatasetSettings
from medimg.config.evaluation import CalibrationSettings, EvaluationSettings
from medimg.config.schema import one_of, positive, require
from medimg.config.training import PathSettings, TrainerSettings
from medimg.names import CAM_METHODS, ENGINES, TTA_VIEWS


def check_views(views: list[str], where: str) -> None:
    """The views ``tta=true`` adds to the identity: names from medimg.names.TTA_VIEWS."""
    for v in views:
        one_of(v, TTA_VIEWS[1:], where)


@dataclass(frozen=True)
class CorruptionSettings:
    names: list[str]
    severities: list[int]
    seed: int
    metric: str


@dataclass(frozen=True)
class EvaluateSettings:
    task_name: str
    seed: int
    ckpt_path: str | None
    cv_dir: str | None
    output_dir: str | None
    split: str
    recalibrate: bool
    tta: bool
    tta_views: list[str]
    robustness: bool
    corruptions: CorruptionSettings
    paths: PathSettings
    trainer: TrainerSettings
    logger: dict[str, Any] | None
    calibration: CalibrationSettings
    evaluation: EvaluationSettings

    def check(self, where: str) -> None:
        one_of(self.split, ("test", "val"), "split")
        check_views(self.tta_views, "tta_views")
        require(bool(self.ckpt_path) != bool(self.cv_dir), "ckpt_path",
                "give exactly one of ckpt_path=<run>/checkpoints/best.ckpt or cv_dir=<multirun folder>")


@dataclass(frozen=True)
class GradCamSettings:
    enabled: bool
    method: str
    target: str | None
    layer: str | None

    def check(self, where: str) -> None:
        one_of(self.method, CAM_METHODS, f"{where}.method")


@dataclass(frozen=True)
class PredictSettings:
    task_name: str
    ckpt_path: str | None
    input: str | None
    output_dir: str
    top_k: int
    batch_size: int
    device: str
    precision: str
    engine: str
    onnx_path: str | None
    threads: int | None
    tta: bool
    tta_views: list[str]
    max_image_pixels: int | None
    max_aspect_ratio: float | None
    gradcam: GradCamSettings
    paths: PathSettings

    def check(self, where: str) -> None:
        require(bool(self.input), "input", "set input=<an image file or a folder of images>")
        one_of(self.engine, ENGINES, "engine")
        check_views(self.tta_views, "tta_views")
        one_of(str(self.precision), ("32", "bf16"), "precision")
        positive(self.top_k, "top_k")
        positive(self.batch_size, "batch_size")
        if self.engine == "torch" or self.gradcam.enabled:
            require(bool(self.ckpt_path), "ckpt_path", "set ckpt_path=<run>/checkpoints/best.ckpt")


@dataclass(frozen=True)
class ExportSettings:
    task_name: str
    ckpt_path: str | None
    format: str
    output_dir: str | None
    opset: int
    check: bool
    atol: float
    paths: PathSettings

    def __post_init__(self) -> None:
        one_of(self.format, ("onnx",), "format")
        require(bool(self.ckpt_path), "ckpt_path", "set ckpt_path=<run>/checkpoints/best.ckpt")
        positive(self.atol, "atol")


@dataclass(frozen=True)
class ExplainSettings:
    task_name: str
    ckpt_path: str | None
    output_dir: str
    split: str
    max_images: int | None
    methods: list[str]
    layers: list[str | None]
    target: str
    tolerance: int
    seed: int
    road_images: int
    road_percentiles: list[float]
    batch_size: int
    device: str
    examples: int
    paths: PathSettings
    dataset: DatasetSettings

    def check(self, where: str) -> None:
        require(bool(self.ckpt_path), "ckpt_path", "set ckpt_path=<run>/checkpoints/best.ckpt")
        one_of(self.target, ("label", "predicted"), "target")
        for m in self.methods:
            one_of(m, CAM_METHODS, "methods")
        one_of(self.split, ("test", "val", "train"), "split")


@dataclass(frozen=True)
class DownloadSettings:
    task_name: str
    keep_archive: bool
    prepare: bool
    max_archive_members: int
    max_extracted_gib: float
    max_compression_ratio: float
    paths: PathSettings
    dataset: DatasetSettings
