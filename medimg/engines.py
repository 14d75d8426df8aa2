"""The engine a command predicts with (PyTorch on the checkpoint, or onnxruntime on ``model.onnx``) and the
decision rule on its probabilities: shared by ``medimg.predict`` and ``medimg.serve``."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from medimg.data.transforms import Preprocess
from medimg.errors import ConfigError
from medimg.evaluation.calibration import Calibration
from medimg.evaluation.conformal import Conformal
from medimg.evaluation.metrics import predict_labels
from medimg.evaluation.selective import ReferralRule
from medimg.inference import TorchEngine, TrainedModel, load_trained
from medimg.onnx_model import OnnxEngine


def onnx_path_of(ckpt_path: str | None, onnx_path: str | None) -> Path:
    """``onnx_path``, or ``model.onnx`` next to the checkpoint (where ``python -m medimg.export`` writes it)."""
    if onnx_path:
        return Path(onnx_path)
    if ckpt_path:
        return Path(ckpt_path).with_name("model.onnx")
    raise ConfigError("engine=onnx needs onnx_path=<model.onnx> (or ckpt_path=, next to which "
                      "`python -m medimg.export` writes model.onnx)")


class Engine(Protocol):
    """What predict and the server use of an engine (TorchEngine and OnnxEngine are both one): calibrated
    probabilities of prepared images, and what is needed to prepare them and to decide."""

    name: str
    class_names: list[str]
    preprocess: Preprocess
    threshold: float | None
    calibration_note: str
    conformal: Conformal | None  # the prediction-set rule stored with the calibration, if any
    referral: ReferralRule | None  # the referral rule stored with it, if any

    @property
    def calibration(self) -> Calibration: ...

    def probs(self, x: torch.Tensor) -> np.ndarray: ...

    def trained_model(self, ckpt_path: str | Path | None, device: str) -> TrainedModel | None:
        """The PyTorch model Grad-CAM runs on (None when the engine has none and no checkpoint is given)."""


def open_engine(engine: str, ckpt_path: str | None, onnx_path: str | None, device: str, precision: str,
                threads: int | None) -> Engine:
    """``engine=onnx``: the exported model through onnxruntime; ``torch``: the checkpoint in PyTorch."""
    if engine == "onnx":
        return OnnxEngine(onnx_path_of(ckpt_path, onnx_path), device, threads)
    return TorchEngine(load_trained(ckpt_path, device), device, str(precision))


def decide(probs: np.ndarray, threshold: float | None) -> list[int]:
    """Class decisions: the operating threshold on P(class 1) for binary models that have one, else the argmax."""
    return predict_labels(torch.from_numpy(probs), threshold).tolist()
