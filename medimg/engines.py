"""The engine a command predicts with (PyTorch on the checkpoint, or onnxruntime on ``model.onnx``) and the
decision rule on its probabilities: shared by ``medimg.predict`` and ``medimg.serve``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medimg.errors import ConfigError
from medimg.evaluation.metrics import predict_labels
from medimg.inference import TorchEngine, load_trained
from medimg.onnx_model import OnnxEngine


def onnx_path_of(ckpt_path: str | None, onnx_path: str | None) -> Path:
    """``onnx_path``, or ``model.onnx`` next to the checkpoint (where ``python -m medimg.export`` writes it)."""
    if onnx_path:
        return Path(onnx_path)
    if ckpt_path:
        return Path(ckpt_path).with_name("model.onnx")
    raise ConfigError("engine=onnx needs onnx_path=<model.onnx> (or ckpt_path=, next to which "
                      "`python -m medimg.export` writes model.onnx)")


def open_engine(engine: str, ckpt_path: str | None, onnx_path: str | None, device: str, precision: str,
                threads: int | None) -> TorchEngine | OnnxEngine:
    """``engine=onnx``: the exported model through onnxruntime; ``torch``: the checkpoint in PyTorch."""
    if engine == "onnx":
        return OnnxEngine(onnx_path_of(ckpt_path, onnx_path), device, threads)
    return TorchEngine(load_trained(ckpt_path, device), device, str(precision))


def decide(probs: np.ndarray, threshold: float | None) -> list[int]:
    """Class decisions: the operating threshold on P(class 1) for binary models that have one, else the argmax."""
    return predict_labels(torch.from_numpy(probs), threshold).tolist()
