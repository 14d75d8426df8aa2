"""Checkpoint files written atomically in their own folder.

Lightning's default writer saves through fsspec, which writes to a temporary file in ``$TMPDIR`` and moves it
into place: where ``$TMPDIR`` is another file system the move is a copy, and a kill during it leaves a
truncated checkpoint where a good one was. Here the bytes go to a temporary name beside the destination,
are fsynced, and replace it in one rename (``medimg.files.atomic_write``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medimg.files import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        with atomic_write(Path(path)) as tmp:
            torch.save(checkpoint, tmp)
