"""Settings of ``python -m medimg.serve``, read strictly from conf/serve.yaml (which holds the defaults)."""

from __future__ import annotations

from dataclasses import dataclass

from medimg.config.schema import auto_or_bool, one_of, positive, require
from medimg.config.training import PathSettings

LOG_LEVELS = ("critical", "error", "warning", "info", "debug")


@dataclass(frozen=True)
class UploadLimitSettings:
    max_files: int
    max_file_bytes: int
    max_image_pixels: int | None
    max_aspect_ratio: float | None
    max_connections: int

    def check(self, where: str) -> None:
        positive(self.max_files, f"{where}.max_files")
        positive(self.max_file_bytes, f"{where}.max_file_bytes")
        positive(self.max_connections, f"{where}.max_connections")


@dataclass(frozen=True)
class InferenceSettings:
    workers: int
    decoders: int
    batching: bool | str
    max_batch: int
    max_wait_ms: float

    def batching_for(self, engine: str) -> bool:
        """``batching=auto``: on for the torch engine (about 2x the requests/s of one forward pass per request at
        8 and 32 concurrent clients), off for onnx (no gain there), as benchmarks/serve_load.py measured."""
        return engine == "torch" if self.batching == "auto" else bool(self.batching)

    def check(self, where: str) -> None:
        auto_or_bool(self.batching, f"{where}.batching")
        positive(self.workers, f"{where}.workers")
        positive(self.decoders, f"{where}.decoders")
        positive(self.max_batch, f"{where}.max_batch")
        require(isinstance(self.max_wait_ms, int | float) and self.max_wait_ms >= 0, f"{where}.max_wait_ms",
                f"must be a number of milliseconds >= 0, got {self.max_wait_ms!r}")


@dataclass(frozen=True)
class ServeGradCamSettings:
    method: str          # checked against the methods medimg.explain.gradcam has when the model is loaded
    layer: str | None


@dataclass(frozen=True)
class ServeSettings:
    task_name: str
    ckpt_path: str | None
    engine: str
    onnx_path: str | None
    host: str
    port: int
    device: str
    precision: str
    threads: int | None
    top_k: int
    log_level: str
    limits: UploadLimitSettings
    inference: InferenceSettings
    gradcam: ServeGradCamSettings
    paths: PathSettings

    def check(self, where: str) -> None:
        one_of(self.engine, ("torch", "onnx"), "engine")
        one_of(str(self.precision), ("32", "bf16"), "precision")
        one_of(self.log_level, LOG_LEVELS, "log_level")
        positive(self.top_k, "top_k")
        positive(self.threads, "threads", allow_none=True)
        require(isinstance(self.port, int) and 0 <= self.port <= 65535, "port",
                f"must be a TCP port number 0..65535, got {self.port!r}")
        if self.engine == "torch":
            require(bool(self.ckpt_path), "ckpt_path", "set ckpt_path=<run>/checkpoints/best.ckpt")
        else:
            require(bool(self.ckpt_path or self.onnx_path), "onnx_path",
                    "engine=onnx needs onnx_path=<model.onnx> or ckpt_path= (model.onnx next to it)")
