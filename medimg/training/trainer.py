"""Turns the run's settings into a Lightning Trainer for one phase, or for evaluation.

A phase's Trainer keeps the best checkpoint of the phase (``<phase>-best.ckpt``, by ``monitor``), writes
``last.ckpt`` after every validated epoch (every epoch, or every ``val_every`` on a small set: the resume
point; both written atomically, with the run's bookkeeping inside), stops early when ``monitor`` has not beaten
the weights the phase started from within its patience, seeds every epoch (see seeding.py), and logs to the
configured loggers under a version named after the phase.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    EMAWeightAveraging,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from medimg.config.runtime import Runtime
from medimg.config.training import EarlyStoppingSettings, TrainerSettings, TrainSettings
from medimg.training.callbacks.epoch_log import EpochLog, lines_on_console
from medimg.training.callbacks.epoch_start_checkpoint import EpochStartCheckpoint
from medimg.training.callbacks.gradcam_logger import GradCamLogger
from medimg.training.callbacks.history import TrainingHistory
from medimg.training.callbacks.network_summary import NetworkSummary
from medimg.training.callbacks.seeding import StepSeeder
from medimg.training.callbacks.step_timer import StepTimer
from medimg.training.checkpoint_io import AtomicCheckpointIO
from medimg.training.loggers import build_loggers
from medimg.training.phase_book import PhaseBook, RunStateWriter


def trainer_kwargs(trainer: TrainerSettings, rt: Runtime) -> dict[str, Any]:
    """Trainer arguments: the pass-through keys, with this run's resolved accelerator, precision, determinism
    (cuDNN's benchmark where kernels need not be deterministic); an explicit ``+trainer.<arg>`` wins.
    medimg's loaders shard themselves under DDP (``use_distributed_sampler=False``)."""
    ours = {"accelerator": rt.accelerator, "precision": rt.precision, "deterministic": rt.deterministic,
            "benchmark": rt.cudnn_benchmark, "use_distributed_sampler": False, "enable_model_summary": False,
            "plugins": [AtomicCheckpointIO()]}
    return {**trainer.lightning_kwargs(), **ours, **trainer.extra}


def is_rank_zero() -> bool:
    """Rank 0 of a distributed run (or the only process), as Lightning reads it from the environment."""
    return rank_zero_only.rank == 0


def _checkpoints(s: TrainSettings, phase: str, folder: Path, every: int) -> tuple[ModelCheckpoint, list[Callback]]:
    ck = s.callbacks.checkpoint
    best = ModelCheckpoint(
        dirpath=str(folder), filename=f"{phase}-best" if ck.save_top_k == 1 else f"{phase}-{{epoch:02d}}",
        monitor=s.monitor, mode=s.monitor_mode, save_top_k=ck.save_top_k, save_last=False,
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    return best, [EpochStartCheckpoint(folder / "last.ckpt", every)] if ck.save_last else []


def early_stopping(es: EarlyStoppingSettings, monitor: str, mode: str, patience: int,
                   start_score: float | None) -> EarlyStopping:
    """Early stopping on ``monitor``; with ``from_start`` (and a ``start_score``: the validation score of the
    weights the phase starts from) the phase's epochs must beat that score, not only its own first epoch, so a
    fine-tune phase that never improves on a solved head ends after ``patience`` epochs. A resumed phase
    restores the count from its checkpoint."""
    stop = EarlyStopping(monitor=monitor, mode=mode, patience=int(patience), min_delta=es.min_delta,
                         check_finite=True)
    if es.from_start and start_score is not None:
        stop.best_score = torch.tensor(float(start_score))
    return stop


def build_phase_trainer(s: TrainSettings, rt: Runtime, book: PhaseBook, phase: str, epochs: int,
                        patience: int | None, run_dir: Path, start_score: float | None = None,
                        val_every: int = 1) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Trainer for one phase and its best-checkpoint callback (``start_score``: see ``early_stopping``;
    ``patience`` in validations, one every ``val_every`` epochs: training/budget.py)."""
    cb = s.callbacks
    best, extra = _checkpoints(s, phase, run_dir / "checkpoints", val_every)
    console = lines_on_console(cb.epoch_log)  # then no progress bar: a log of lines, not of redrawn bars
    callbacks: list[Callback] = [best, *extra, RunStateWriter(book), StepSeeder(s.seed, phase), NetworkSummary(),
                                 TrainingHistory(run_dir / "history.json", phase, s.monitor),
                                 EpochLog(run_dir, phase, s.monitor, console)]
    if cb.early_stopping.enabled and patience is not None:
        callbacks.append(early_stopping(cb.early_stopping, s.monitor, s.monitor_mode, patience, start_score))
    loggers = build_loggers(s.logger, run_dir, phase)
    if loggers and cb.lr_monitor:
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    gc = cb.gradcam
    if gc.enabled and any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        callbacks.append(GradCamLogger(every_n_epochs=gc.every_n_epochs, num_images=gc.num_images,
                                       method=gc.method, layer=gc.layer))
    if s.model.ema_decay is not None:  # validation and checkpoints see the averaged weights
        callbacks.append(EMAWeightAveraging(decay=s.model.ema_decay))
    if cb.throughput:
        callbacks.append(StepTimer(run_dir / "throughput.json"))
    bar = s.trainer.enable_progress_bar and not console
    if bar and cb.rich_progress:
        callbacks.append(RichProgressBar())
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=loggers or False,
                        default_root_dir=str(run_dir), check_val_every_n_epoch=val_every,
                        **{**trainer_kwargs(s.trainer, rt), "enable_progress_bar": bar})
    return trainer, best


def build_eval_trainer(trainer: TrainerSettings, rt: Runtime, logger_cfg: dict[str, Any] | None,
                       rich_progress: bool, out_dir: Path, version: str) -> L.Trainer:
    callbacks: list[Callback] = [RichProgressBar()] if trainer.enable_progress_bar and rich_progress else []
    loggers = build_loggers(logger_cfg, out_dir, version)
    return L.Trainer(logger=loggers or False, callbacks=callbacks, default_root_dir=str(out_dir),
                     **trainer_kwargs(trainer, rt))
