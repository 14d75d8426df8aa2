"""``last.ckpt`` at the start of every validated epoch: the resume point a kill falls back to."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback


class EpochStartCheckpoint(Callback):
    """``last.ckpt`` when an epoch starts, from the second on: the previous epoch complete, its validation,
    early-stopping count and scheduler step included. Lightning resumes such a checkpoint as a clean start of
    the next epoch (the last epoch of a phase is saved by the phase's boundary checkpoint)."""

    def __init__(self, path: Path, every: int = 1):
        self.path, self.every = Path(path), int(every)  # after each validated epoch (every ``every`` epochs)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.current_epoch > 0 and trainer.current_epoch % self.every == 0:
            # the per-epoch counters as the epoch loop resets them a moment later, so that a resume from this
            # checkpoint runs the whole epoch (else Lightning reads the previous epoch's counters as "done")
            loop = trainer.fit_loop.epoch_loop
            loop.batch_progress.reset_on_run()
            loop.scheduler_progress.reset_on_run()
            loop.automatic_optimization.optim_progress.reset_on_run()
            trainer.save_checkpoint(self.path, weights_only=False)  # all of it: optimiser, loops, callbacks
