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
