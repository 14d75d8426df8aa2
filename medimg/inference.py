"""The checkpoint and inference contract: one module owns what a medimg checkpoint holds and how it is used.

A medimg checkpoint is a Lightning checkpoint (``state_dict``, ``hyper_parameters``: the ImageClassifier's
arguments, the evaluation ``preprocess`` among them) plus a ``medimg`` entry::

    {"phase": {...}, "phases_done": {...}, "class_names": [...], "settings": {...}, "calibration": {...} | None}

(``calibration``: ``Calibration.to_dict()``, read back as a ``Calibration`` value; ``conformal``, when the run
fitted prediction sets: ``Conformal.to_dict()``; ``referral``, when it fitted a referral threshold:
``ReferralRule.to_dict()``.)

It is read with ``weights_only=True`` (tensors and plain types, never arbitrary pickles). Everything that
predicts after training (evaluate, predict, export, explain, the Grad-CAM callback, the server) loads it with
``load_trained`` and uses the ``TrainedModel``'s class names, preprocessing, calibration (presence,
application, the UNCALIBRATED note) and decision rule; ``TorchEngine`` runs it on a device and precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medimg.data.transforms import Preprocess
from medimg.errors import CheckpointError, UserError
from medimg.evaluation.calibration import Calibration
from medimg.evaluation.conformal import Conformal
from medimg.evaluation.selective import ReferralRule
from medimg.files import read_torch, save_torch
from medimg.models.classifier import ImageClassifier

UNCALIBRATED = "UNCALIBRATED: the checkpoint holds no calibration (plain softmax)"


def checkpoint_entry(phase: dict[str, Any], phases_done: dict[str, Any], class_names, settings: dict[str, Any],
                     phase_completed: bool) -> dict[str, Any]:
    """The ``medimg`` entry of a checkpoint. ``phase_completed``: the weights are the best of ``phase``, which
    is over (written at a phase boundary); else the checkpoint is the end of an epoch inside ``phase``."""
    return {"phase": dict(phase), "phases_done": {k: dict(v) for k, v in phases_done.items()},
            "class_names": list(class_names), "settings": settings, "phase_completed": bool(phase_completed),
            "calibration": None}


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    ckpt = read_torch(path, CheckpointError, "checkpoint")
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "medimg" not in ckpt:
        raise CheckpointError(f"{path} is not a medimg checkpoint (no 'state_dict' / 'medimg' entries)")
    return ckpt


def medimg_state(path: str | Path) -> dict[str, Any]:
    """The phase, finished phases, class names, settings and calibration stored in a checkpoint."""
    return load_checkpoint(path)["medimg"]


def run_dir_of(ckpt_path: str | Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``; a checkpoint elsewhere -> its folder."""
    p = Path(ckpt_path).resolve()
    return p.parents[1] if p.parent.name == "checkpoints" else p.parent


def calibration_note(calibration: Calibration) -> str:
    """One line that says how the probabilities are made; starts with UNCALIBRATED when they are plain softmax."""
    return f"calibrated ({calibration.describe()})" if calibration.is_calibrated else UNCALIBRATED


class ClassMismatchError(CheckpointError):
    """A checkpoint used on data (or with another checkpoint) whose classes differ."""


def check_same_classes(model_classes, data_classes, ckpt: str | Path, dataset: str) -> None:
    """A checkpoint used on data with other classes stops with both class lists."""
    if list(model_classes) != list(data_classes):
        hint = " (the same classes in another order)" if sorted(model_classes) == sorted(data_classes) else ""
        raise ClassMismatchError(
            f"checkpoint {ckpt} was trained on classes {list(model_classes)} but dataset {dataset} has classes "
            f"{list(data_classes)}{hint}; use data with the checkpoint's classes in the same order")


@dataclass
class TrainedModel:
    """A checkpoint's network (eval mode) with everything inference needs to use it as it was evaluated."""

    model: ImageClassifier
    path: Path
    state: dict[str, Any]
    calibration: Calibration
    conformal: Conformal | None = None  # the prediction-set rule fitted with the calibration
    referral: ReferralRule | None = None  # the referral rule fitted with it

    @property
    def class_names(self) -> list[str]:
        return list(self.model.class_names)

    @property
    def backbone(self) -> str:
        return str(self.model.hparams.backbone)

    @property
    def preprocess(self) -> Preprocess:
        return Preprocess.from_dict(self.model.hparams.preprocess)

    @property
    def threshold(self) -> float | None:
        """The binary operating threshold on P(class 1), when calibration chose one."""
        return self.calibration.threshold

    @property
    def is_calibrated(self) -> bool:
        return self.calibration.is_calibrated

    @property
    def calibration_note(self) -> str:
        return calibration_note(self.calibration)

    def probs(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities of ``logits`` (plain softmax without a calibration)."""
        return self.calibration.probs(logits)

    def decide(self, probs: torch.Tensor) -> torch.Tensor:
        """Class decisions: the operating threshold for binary models that have one, else the argmax."""
        return self.calibration.decide(probs)


def load_trained(path: str | Path, device: str | torch.device = "cpu") -> TrainedModel:
    """Rebuild the classifier stored in a medimg checkpoint (no weights downloaded), in eval mode on ``device``."""
    ckpt = load_checkpoint(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    try:
        model = ImageClassifier(**{**hp, "weights": None})  # the checkpoint carries the trained weights
    except TypeError as e:
        raise CheckpointError(f"checkpoint {path} was written by another medimg version (its model arguments "
                              f"{sorted(hp)} do not fit this one: {e}); retrain, or use the version that wrote it") from None
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its own model description: {e}") from e
    state = ckpt["medimg"]
    model.eval()
    conformal = Conformal.from_dict(state["conformal"]) if state.get("conformal") else None
    referral = ReferralRule.from_dict(state["referral"]) if state.get("referral") else None
    return TrainedModel(model.to(device), Path(path), state, Calibration.from_dict(state.get("calibration")), conformal,
                        referral)


def save_calibrated(src: str | Path, dst: str | Path, calibration: Calibration,
                    conformal: Conformal | None = None, referral: ReferralRule | None = None) -> Path:
    """Copy the checkpoint ``src`` to ``dst`` with ``calibration`` (and the ``conformal`` and ``referral`` rules)
    stored in it (read safely, written atomically), so every later prediction from ``dst`` is calibrated and has
    its sets and referrals."""
    ckpt = load_checkpoint(src)
    ckpt["medimg"]["calibration"] = calibration.to_dict()
    ckpt["medimg"]["conformal"] = conformal.to_dict() if conformal is not None else None
    ckpt["medimg"]["referral"] = referral.to_dict() if referral is not None else None
    return save_torch(ckpt, dst)


def resolve_device(device: str) -> str:
    """``auto`` -> cuda when a GPU is there, else cpu; a CUDA device that is not there is an error."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={device} but no CUDA GPU is available; use device=cpu or device=auto")
    return str(device)


class TorchEngine:
    """A trained checkpoint run in PyTorch on a device, in fp32 or bf16 (autocast + channels_last)."""

    name = "torch"

    def __init__(self, trained: TrainedModel, device: str, precision: str):
        if str(precision) not in ("32", "bf16"):
            raise UserError(f"precision={precision!r}: choose 32 or bf16")
        self.trained, self.device, self.bf16 = trained, torch.device(device), str(precision) == "bf16"
        self.model = trained.model.to(self.device)
        if self.bf16:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.class_names, self.preprocess = trained.class_names, trained.preprocess
        self.threshold, self.calibration_note = trained.threshold, trained.calibration_note
        self.conformal, self.referral = trained.conformal, trained.referral

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        with torch.inference_mode():
            if self.bf16:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return self.model(x).float()
            return self.model(x).float()

    def probs(self, x: torch.Tensor) -> np.ndarray:
        return self.trained.probs(self.logits(x)).cpu().numpy()

    @property
    def calibration(self) -> Calibration:
        return self.trained.calibration

    def trained_model(self, ckpt_path: str | Path | None, device: str) -> TrainedModel:
        """The PyTorch model for Grad-CAM: this engine's own."""
        return self.trained
