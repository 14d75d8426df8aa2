"""Reading medimg checkpoints safely (weights_only: tensors and plain types, never arbitrary pickles)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not written by medimg."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        ckpt = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"checkpoint {p} cannot be read (corrupt, truncated or not a torch file): {e}") from e
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "medimg" not in ckpt:
        raise CheckpointError(f"{p} is not a medimg checkpoint (no 'state_dict' / 'medimg' entries)")
    return ckpt


def read_medimg_state(path: str | Path) -> dict[str, Any]:
    """The phase, finished phases and class names that medimg stored in a checkpoint."""
    return load_checkpoint(path)["medimg"]


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild the ImageClassifier stored in a medimg checkpoint, without downloading any weights.

    Returns ``(model, medimg_state)``; the model is in eval mode, and ``model.calibration`` holds the stored
    calibration (None when the checkpoint has none).
    """
    from medimg.models.classifier import ImageClassifier  # local: keeps this module light to import

    ckpt = load_checkpoint(path)
    hp = dict(ckpt.get("hyper_parameters") or {})
    if "backbone" not in hp or "class_names" not in hp:
        raise CheckpointError(f"checkpoint {path} lacks the model's hyper-parameters (backbone, class_names)")
    hp["weights"] = None  # the checkpoint carries the trained weights
    model = ImageClassifier(**hp)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise CheckpointError(f"checkpoint {path} does not match its own model description: {e}") from e
    state = ckpt["medimg"]
    model.calibration = state.get("calibration")
    model.phases_done = state.get("phases_done", {})
    model.eval()
    return model.to(map_location), state
