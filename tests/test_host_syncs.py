"""The training loop reads values back from the model's device (``.item()``, ``bool()``, ``.tolist()``: a host
sync on a GPU) only every few steps, not once per step. Counted on CPU, where the same calls are made.

Only reads made by Lightning and by medimg's model code are counted: the others seen on CPU are host-side by
design (the optimiser's step counters live on the CPU, augmentation runs in the loader, torchmetrics' range
check has a sync-free branch for device tensors).
"""

from __future__ import annotations

import traceback

import pytest
import torch
from lightning.pytorch import Callback

from medimg.train import train

pytestmark = pytest.mark.slow

COUNTED = ("/lightning/", "/medimg/models/", "/medimg/callbacks/", "/medimg/train.py", "/medimg/trainer_builder.py")


class SyncCounter(Callback):
    """Counts device read-backs from the start to the end of each training epoch (no validation runs)."""

    def __init__(self, monkeypatch):
        self.counting, self.reads, self.steps = False, 0, 0
        for name in ("item", "__bool__", "tolist"):
            original = getattr(torch.Tensor, name)

            def wrapped(t, *a, _orig=original, **k):
                if self.counting:
                    caller = traceback.extract_stack(limit=2)[0].filename
                    self.reads += any(part in caller for part in COUNTED)
                return _orig(t, *a, **k)

            monkeypatch.setattr(torch.Tensor, name, wrapped)

    def on_train_epoch_start(self, trainer, pl_module):
        self.counting = True

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps += 1

    def on_train_epoch_end(self, trainer, pl_module):
        self.counting = False


def _count(monkeypatch, tiny_cfg, *overrides: str) -> tuple[int, int]:
    counter = SyncCounter(monkeypatch)
    import medimg.training.phases as train_mod

    real = train_mod.build_phase_trainer

    def with_counter(*args, **kwargs):
        trainer, ckpt = real(*args, **kwargs)
        trainer.callbacks.append(counter)
        return trainer, ckpt

    monkeypatch.setattr(train_mod, "build_phase_trainer", with_counter)
    train(tiny_cfg("stage=scratch", "dataset.batch_size=4", "trainer.limit_val_batches=0", "test=false",
                   "calibration=none", "callbacks.early_stopping.enabled=false", "trainer.enable_progress_bar=true",
                   "callbacks.epoch_log=false",  # the bar stays on under pytest (stdout is no terminal there)
                   "model.nan_check_every=20", *overrides))
    return counter.reads, counter.steps


def test_training_steps_do_not_read_back_every_step(monkeypatch, tiny_cfg):
    reads, steps = _count(monkeypatch, tiny_cfg, "model.step_loss_in_bar=false")  # what auto gives on a GPU
    assert steps >= 20
    # the NaN check every 20 steps, the logger every 50, a few at the epoch's end: well under one per step
    assert reads <= steps // 20 + 6, (reads, steps)


def test_the_live_loss_in_the_bar_reads_back_every_step(monkeypatch, tiny_cfg):
    reads, steps = _count(monkeypatch, tiny_cfg, "model.step_loss_in_bar=true")  # auto on CPU: free there
    assert reads >= steps  # the counter does see per-step read-backs
