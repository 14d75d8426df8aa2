"""Every training step starts from a random state that depends only on (seed, phase, epoch, step).

With the data order and augmentation fixed per epoch by ``medimg.data.sampling``, this makes the rest of a
step's randomness (dropout) independent of what ran before it in the process (a resumed run creates its data
loader iterators afresh, and creating one draws from torch's random state): a run killed and resumed from
``last.ckpt`` trains its remaining epochs exactly as the uninterrupted run would have.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from medimg.data.sampling import derive_seed


def seed_all(seed: int) -> None:
    """Python's, NumPy's and torch's (CPU and every GPU) random state from one seed, quietly."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class StepSeeder(Callback):
    def __init__(self, seed: int, phase: str):
        self.seed, self.phase = int(seed), phase

    def on_train_batch_start(self, trainer: Trainer, pl_module: LightningModule, batch, batch_idx: int) -> None:
        seed_all(derive_seed(self.seed, self.phase, trainer.current_epoch, batch_idx, trainer.global_rank))
