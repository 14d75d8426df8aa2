"""How long a phase trains, in optimiser steps as well as epochs, so that a small data set still trains enough.

A phase's ``epochs`` and ``patience`` are the recipe for a HAM10000-sized set (110 steps an epoch at batch 64).
On a small set an epoch is a handful of steps: ``min_steps`` raises the epochs until the phase takes at least
that many optimiser steps, and ``patience_min_steps`` raises the early-stopping patience to cover at least that
many steps; a large set keeps its epochs and patience. ``trainer.max_epochs`` still caps every phase (debugging).

Validation follows a cadence in steps as well: with ``trainer.val_min_steps`` a phase validates (and so keeps
its best checkpoint, writes ``last.ckpt`` and counts early-stopping patience) every ``val_every`` epochs, at
least that many steps apart, so a 100-image set is not validated after every 2-step epoch. Patience is then
counted in validations (the epochs' patience over ``val_every``, rounded up), and a phase's epochs are rounded
up to whole validation periods, so its last epoch is validated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medimg.config.training import PhaseSettings, TrainerSettings


@dataclass(frozen=True)
class PhaseBudget:
    steps_per_epoch: int
    epochs: int
    patience: int | None
    total_steps: int
    epochs_capped: bool = False   # trainer.max_epochs lowered the phase's epochs
    val_every: int = 1            # epochs between validations (trainer.val_min_steps on a small set)

    def describe(self, ph: PhaseSettings) -> str:
        """The budget in one line, with each change to the phase's own epochs and patience and its reason."""
        changes = []
        if self.epochs != ph.epochs:
            for_steps = math.ceil(ph.min_steps / self.steps_per_epoch)
            why = ("lowered by trainer.max_epochs" if self.epochs_capped
                   else f"raised to reach min_steps={ph.min_steps} on the small data set" if for_steps > ph.epochs
                   else f"rounded up to whole validation periods of {self.val_every} epochs")
            changes.append(f"epochs {ph.epochs} -> {self.epochs}, {why}")
        if self.patience != ph.patience:
            changes.append(f"patience {ph.patience} -> {self.patience}, raised to reach "
                           f"patience_min_steps={ph.patience_min_steps} on the small data set")
        if self.val_every > 1:
            counted = (f", patience {self.patience} epochs = {self.patience_checks} validations"
                       if self.patience is not None else "")
            changes.append(f"validated every {self.val_every} epochs ({self.val_every * self.steps_per_epoch} "
                           f"steps, trainer.val_min_steps){counted}")
        what = f" ({'; '.join(changes)})" if changes else ""
        return f"{self.steps_per_epoch} optimiser steps an epoch, up to {self.total_steps} in all{what}"

    @property
    def patience_checks(self) -> int | None:
        """The patience in validations, the unit early stopping counts in."""
        return None if self.patience is None else max(1, math.ceil(self.patience / self.val_every))


def world_size(trainer: TrainerSettings, accelerator: str) -> int:
    devices = trainer.devices
    if isinstance(devices, list | tuple):
        n = len(devices)
    elif devices in ("auto", -1, "-1"):
        n = torch.cuda.device_count() if accelerator == "gpu" else 1
    else:
        n = int(devices)
    return max(1, n) * max(1, int(trainer.num_nodes))


def steps_per_epoch(n_train: int, batch_size: int, trainer: TrainerSettings, world: int) -> int:
    batches = math.ceil(math.ceil(n_train / world) / batch_size)
    limit = trainer.limit_train_batches
    if isinstance(limit, int) and not isinstance(limit, bool):
        batches = min(batches, limit)
    elif isinstance(limit, float):
        batches = max(1, math.ceil(batches * limit))
    return max(1, math.ceil(batches / max(1, int(trainer.accumulate_grad_batches))))


def phase_budget(ph: PhaseSettings, n_train: int, batch_size: int, trainer: TrainerSettings,
                 world: int) -> PhaseBudget:
    spe = steps_per_epoch(n_train, batch_size, trainer, world)
    wanted = max(ph.epochs, math.ceil(ph.min_steps / spe))
    every = max(int(trainer.check_val_every_n_epoch), math.ceil(trainer.val_min_steps / spe), 1)
    wanted = math.ceil(wanted / every) * every  # whole validation periods: the last epoch is validated
    epochs = wanted if trainer.max_epochs is None else min(wanted, int(trainer.max_epochs))
    patience = None if ph.patience is None else max(ph.patience, math.ceil(ph.patience_min_steps / spe))
    return PhaseBudget(spe, epochs, patience, epochs * spe, epochs_capped=epochs < wanted,
                       val_every=min(every, epochs))
