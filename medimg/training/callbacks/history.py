"""The training history: one record per epoch of every phase in ``<run>/history.json``.

A record holds the phase, the epoch (within the phase), the phase trainer's global step, the epoch's mean
training loss, the validation loss, the monitored metric (under its own name, e.g. ``val/auroc``, and named by
``monitor``) and the learning rate each parameter group trained the epoch with (``lr``: the first group's). Values a phase did not
produce that epoch (validation skipped) are null. The file is rewritten after each epoch through
``medimg.files.write_json`` (atomic); a resumed phase replaces the records of the epochs it runs again, so the
file never holds an epoch twice. Records are ordered by phase (in the order the phases first appeared) and
epoch; ``medimg.evaluation.learning_curves`` draws them with the phase boundaries marked.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from medimg.evaluation.learning_curves import read_history
from medimg.files import write_json

TRAIN_LOSS_KEYS = ("train/loss_epoch", "train/loss")  # Lightning names the epoch mean of an on_step+on_epoch log


def _number(value: Any) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def merge_record(records: list[dict[str, Any]], record: dict[str, Any]) -> list[dict[str, Any]]:
    """``records`` with ``record`` replacing any record of the same phase and epoch, ordered by phase (first
    appearance) and epoch."""
    kept = [r for r in records if (r["phase"], r["epoch"]) != (record["phase"], record["epoch"])] + [record]
    order = {p: i for i, p in enumerate(dict.fromkeys(r["phase"] for r in kept))}
    return sorted(kept, key=lambda r: (order[r["phase"]], r["epoch"]))


class TrainingHistory(Callback):
    """Appends this phase's epoch records to ``path`` (rank 0 only)."""

    def __init__(self, path: str | Path, phase: str, monitor: str):
        super().__init__()
        self.path = Path(path)
        self.phase = phase
        self.monitor = monitor
        self._validated_epoch: int | None = None
        self._epoch_lrs: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # read now: Lightning steps epoch-interval schedulers after the epoch's last batch, before its end hooks
        self._epoch_lrs = [float(g["lr"]) for opt in trainer.optimizers for g in opt.param_groups]

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated_epoch = int(trainer.current_epoch)

    def epoch_record(self, trainer: L.Trainer) -> dict[str, Any]:
        m = dict(trainer.callback_metrics)
        if self._validated_epoch != int(trainer.current_epoch):  # no validation this epoch: no stale values
            m = {k: v for k, v in m.items() if not k.startswith("val/")}
        train_loss = next((m[k] for k in TRAIN_LOSS_KEYS if k in m), None)
        lrs = self._epoch_lrs
        return {
            "phase": self.phase,
            "epoch": int(trainer.current_epoch),
            "global_step": int(trainer.global_step),
            "train/loss": _number(train_loss),
            "val/loss": _number(m.get("val/loss")),
            self.monitor: _number(m.get(self.monitor)),
            "monitor": self.monitor,
            "lr": lrs[0] if lrs else None,
            "lr_groups": lrs,
        }

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs after the epoch's validation loop (Lightning validates inside the training epoch)
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        records = merge_record(read_history(self.path), self.epoch_record(trainer))
        write_json(self.path, {"monitor": self.monitor, "epochs": records})
