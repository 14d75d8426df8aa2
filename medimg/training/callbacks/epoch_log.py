"""One line per training epoch, so that a run whose console is not a terminal (nohup, tee, SLURM, CI) reports.

A line names the phase, the epoch within the phase, the global step, the epoch's mean training loss, the
monitored metric (``-`` when the epoch was not validated), the time the phase has taken and the time it has
left at most (early stopping may end it sooner). ``callbacks.epoch_log``: ``auto`` logs the lines on the
console when stdout is not a terminal (the progress bar is then off, so the log holds lines, not redrawn
bars), ``true`` always, ``false`` never. The lines always go to the run's log, ``<run>/train.log``, which a
resumed run continues: through the run's log file handler (Hydra's), or, where none writes into the run
folder (``train()`` called from Python), appended to ``train.log`` through ``medimg.files`` (atomic).
"""

from __future__ import annotations

import logging
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback

from medimg.files import append_text
from medimg.training.callbacks.history import TRAIN_LOSS_KEYS, _number

log = logging.getLogger("medimg.train")
LOG_NAME = "train.log"
FORMAT = logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s")  # Hydra's file format


def lines_on_console(setting: Any) -> bool:
    """Whether the epoch lines go to the console: ``callbacks.epoch_log`` (auto = stdout is not a terminal)."""
    if setting == "auto":
        isatty = getattr(sys.stdout, "isatty", None)
        return not (callable(isatty) and isatty())
    return bool(setting)


def progress_bar_shown(enabled: bool, epoch_log: Any) -> bool:
    """The progress bar is drawn when ``trainer.enable_progress_bar`` and the epoch lines are not on the console."""
    return bool(enabled) and not lines_on_console(epoch_log)


def clock(seconds: float) -> str:
    return str(timedelta(seconds=round(max(seconds, 0.0))))


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


class EpochLog(Callback):
    """Logs one line per epoch of the phase ``phase`` (rank 0 only); ``console`` puts it on the console too."""

    def __init__(self, run_dir: str | Path, phase: str, monitor: str, console: bool):
        super().__init__()
        self.run_dir, self.phase, self.monitor, self.console = Path(run_dir), phase, monitor, console
        self._start, self._first_epoch, self._validated = 0.0, 0, -1

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start, self._first_epoch = time.monotonic(), int(trainer.current_epoch)  # a resume starts later

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = int(trainer.current_epoch)

    def line(self, trainer: L.Trainer) -> str:
        m, epoch = dict(trainer.callback_metrics), int(trainer.current_epoch)
        loss = _number(next((m[k] for k in TRAIN_LOSS_KEYS if k in m), None))
        score = _number(m.get(self.monitor)) if self._validated == epoch else None
        total = int(trainer.max_epochs) if trainer.max_epochs and trainer.max_epochs > 0 else epoch + 1
        elapsed = time.monotonic() - self._start
        left = elapsed / max(epoch + 1 - self._first_epoch, 1) * max(total - epoch - 1, 0)
        return (f"phase {self.phase} epoch {epoch + 1}/{total} step {int(trainer.global_step)}: train/loss "
                f"{_score(loss)}, {self.monitor} {_score(score)}; {clock(elapsed)} elapsed, at most "
                f"{clock(left)} left in the phase")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs after the epoch's validation loop (Lightning validates inside the training epoch)
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        self.write(self.line(trainer))

    def write(self, line: str) -> None:
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, "%s", (line,), None)
        files = run_log_handlers(self.run_dir)
        if self.console:
            log.info("%s", line)  # the console and every log file
        else:
            for handler in files:
                handler.handle(record)
        if not files:
            append_text(self.run_dir / LOG_NAME, FORMAT.format(record) + "\n")


def run_log_handlers(run_dir: Path) -> list[logging.FileHandler]:
    """The log file handlers (Hydra's) that write into ``run_dir``."""
    folder = Path(run_dir).resolve()
    return [h for h in logging.getLogger().handlers
            if isinstance(h, logging.FileHandler) and Path(h.baseFilename).resolve().parent == folder]
