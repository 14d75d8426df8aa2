"""Turns the ``trainer``, ``logger`` and ``callbacks`` configs into a Lightning Trainer for one phase."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    RichProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from medimg.callbacks.gradcam_logger import GradCamLogger
from medimg.callbacks.step_timer import StepTimer
from medimg.hardware import resolve_accelerator, resolve_deterministic, resolve_precision

# keys of the trainer config that are ours, not Trainer arguments
_OWN_KEYS = {"max_epochs", "precision", "deterministic", "accelerator"}


def build_loggers(logger_cfg: dict[str, Any] | None, run_dir: Path, version: str) -> list[Logger]:
    """One logger per entry of the ``logger`` config; each phase (and test) logs under its own version."""
    loggers: list[Logger] = []
    for kind, kw in (logger_cfg or {}).items():
        kw = dict(kw or {})
        kw.pop("save_dir", None)
        kw.pop("version", None)
        if kind == "tensorboard":
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), version=version, **kw))
        elif kind == "csv":
            loggers.append(CSVLogger(save_dir=str(run_dir), version=version, **kw))
        else:
            raise ValueError(f"unknown logger {kind!r}; choose tensorboard or csv")
    return loggers


def trainer_kwargs(trainer_cfg: dict[str, Any]) -> dict[str, Any]:
    """Trainer arguments with ``auto`` resolved for this machine and unset (null) limits dropped."""
    cfg = dict(trainer_cfg)
    accelerator = resolve_accelerator(cfg.get("accelerator", "auto"))
    precision = resolve_precision(cfg.get("precision", "auto"), accelerator)
    kw = {k: v for k, v in cfg.items() if k not in _OWN_KEYS and v is not None}
    kw.update(accelerator=accelerator, precision=precision,
              deterministic=resolve_deterministic(cfg.get("deterministic", "auto"), accelerator))
    return kw


def phase_epochs(phase_epochs_cfg: int, trainer_max_epochs: int | None) -> int:
    return int(phase_epochs_cfg if trainer_max_epochs is None else min(phase_epochs_cfg, trainer_max_epochs))


def build_phase_trainer(cfg: dict[str, Any], phase: str, epochs: int, patience: int | None,
                        run_dir: Path) -> tuple[L.Trainer, ModelCheckpoint]:
    """The Trainer for one phase: its own epochs, early stopping and best checkpoint ``<phase>-best.ckpt``."""
    cb_cfg = cfg.get("callbacks") or {}
    ck = cb_cfg.get("checkpoint") or {}
    top_k = ck.get("save_top_k", 1)
    # fixed names, overwritten in place: <phase>-best.ckpt, and one last.ckpt that each phase takes over
    checkpoint = ModelCheckpoint(
        dirpath=str(run_dir / "checkpoints"), filename=f"{phase}-best" if top_k == 1 else f"{phase}-{{epoch:02d}}",
        monitor=cfg["monitor"], mode=cfg["monitor_mode"], save_top_k=top_k, save_last=ck.get("save_last", True),
        auto_insert_metric_name=False, enable_version_counter=False,
    )
    callbacks: list[Callback] = [checkpoint, ModelSummary(max_depth=cb_cfg.get("model_summary_depth", 1))]
    es = cb_cfg.get("early_stopping") or {}
    if es.get("enabled", True) and patience is not None:
        callbacks.append(EarlyStopping(monitor=cfg["monitor"], mode=cfg["monitor_mode"], patience=int(patience),
                                       min_delta=es.get("min_delta", 0.0), check_finite=True))
    loggers = build_loggers(cfg.get("logger"), run_dir, phase)
    if loggers and cb_cfg.get("lr_monitor", True):
        callbacks.append(LearningRateMonitor(logging_interval="epoch"))
    gc = cb_cfg.get("gradcam") or {}
    if gc.get("enabled", False) and any(isinstance(lg, TensorBoardLogger) for lg in loggers):
        callbacks.append(GradCamLogger(every_n_epochs=gc.get("every_n_epochs", 4), num_images=gc.get("num_images", 8),
                                       method=gc.get("method", "gradcam"), layer=gc.get("layer")))
    if cb_cfg.get("throughput", False):
        callbacks.append(StepTimer(run_dir / "throughput.json"))
    kw = trainer_kwargs(cfg["trainer"])
    if kw.get("enable_progress_bar", True) and cb_cfg.get("rich_progress", True):
        callbacks.append(RichProgressBar())
    trainer = L.Trainer(max_epochs=epochs, callbacks=callbacks, logger=loggers or False,
                        default_root_dir=str(run_dir), **kw)
    return trainer, checkpoint


def build_eval_trainer(cfg: dict[str, Any], run_dir: Path, version: str = "test") -> L.Trainer:
    kw = trainer_kwargs(cfg["trainer"])
    callbacks: list[Callback] = []
    if kw.get("enable_progress_bar", True) and (cfg.get("callbacks") or {}).get("rich_progress", True):
        callbacks.append(RichProgressBar())
    loggers = build_loggers(cfg.get("logger"), run_dir, version)
    return L.Trainer(logger=loggers or False, callbacks=callbacks, default_root_dir=str(run_dir), **kw)
