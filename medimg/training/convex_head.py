"""A feature-cached head phase with ``head_fit: convex``: the head solved to convergence, no Trainer needed.

The frozen backbone's pooled features of train and val are computed once (eval transform, the run's precision,
on the training device); ``head_solver.solve_head`` finds the logistic-regression head with the L2 strength that
validates best; the monitored validation metric of the result is the phase's score, its weights the phase's
best checkpoint (``<phase>-best.ckpt``, the same format as every other checkpoint), and its validation metrics
one record of ``history.json``. Every rank solves the same problem; rank 0 writes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

import torch

from medimg.config.runtime import Runtime
from medimg.config.training import TrainSettings
from medimg.data.datamodule import MedImageDataModule
from medimg.errors import ConfigError
from medimg.evaluation.learning_curves import read_history
from medimg.files import write_json
from medimg.models.classifier import ImageClassifier
from medimg.training.callbacks.history import merge_record
from medimg.training.features import FeatureDataset, split_features
from medimg.training.head_solver import solve_head
from medimg.training.loggers import build_loggers
from medimg.training.phase_book import PhaseBook
from medimg.training.trainer import is_rank_zero

log = logging.getLogger("medimg.train")


def _autocast(rt: Runtime):
    if rt.precision.startswith("bf16"):
        return torch.autocast(rt.device_type, dtype=torch.bfloat16)
    if rt.precision.startswith("16"):
        return torch.autocast(rt.device_type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def head_outputs(model: ImageClassifier, cached: FeatureDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets) of the head on cached features, on the model's device, in eval mode (no dropout; the
    head's mode restored afterwards)."""
    head, device = model.head(), next(model.parameters()).device
    was_training = head.training
    logits = head.eval()(cached.features.to(device)).float()
    head.train(was_training)
    return logits, cached.targets.to(device)


def validation_scores(model: ImageClassifier, val: FeatureDataset) -> dict[str, float]:
    """The head's validation metrics on the cached features, as a validation epoch would log them."""
    logits, targets = head_outputs(model, val)
    model.val_metrics.reset()
    scores = {k: float(v) for k, v in model.val_metrics(logits.softmax(-1), targets).items()}
    model.val_metrics.reset()
    scores["val/loss"] = float(model.loss(logits, targets))
    return scores


def training_loss(model: ImageClassifier, train: FeatureDataset) -> float:
    """The solved head's loss on the cached training features (the run's loss and class weights)."""
    return float(model.loss(*head_outputs(model, train)))


def log_scores(s: TrainSettings, run_dir: Path, name: str, scores: dict[str, float]) -> None:
    """The phase's scores to the run's loggers (TensorBoard, CSV, MLflow), under the names an epoch-trained
    phase uses, at step 0."""
    for logger in build_loggers(s.logger, run_dir, name):
        logger.log_metrics(scores, step=0)
        logger.save()
        logger.finalize("success")


def _set_head(model: ImageClassifier, weight: torch.Tensor, bias: torch.Tensor) -> None:
    linear = [m for m in model.head().modules() if isinstance(m, torch.nn.Linear)][-1]
    linear.weight.data.copy_(weight.to(linear.weight))
    linear.bias.data.copy_(bias.to(linear.bias))


def fit_convex_head(s: TrainSettings, rt: Runtime, model: ImageClassifier, dm: MedImageDataModule,
                    book: PhaseBook, name: str, run_dir: Path) -> None:
    model.set_phase(name, [], 1.0, 1)
    device = torch.device(rt.device_type if rt.accelerator != "gpu" else f"cuda:{os.environ.get('LOCAL_RANK', 0)}")
    model.to(device)
    (train, _), (val, _) = (split_features(model, dm, split, _autocast(rt)) for split in ("train", "val"))
    cw = model.class_weight.cpu() if model.class_weight is not None else None
    solution = solve_head(train.features, train.targets, val.features, val.targets, model.num_classes, cw,
                          list(s.optim.probe_l2), s.optim.probe_max_iter)
    _set_head(model, solution.weight, solution.bias)
    scores = validation_scores(model, val)
    if s.monitor not in scores:
        raise ConfigError(f"monitor={s.monitor} is not a validation metric medimg logs; choose one of {sorted(scores)}")
    log.info("phase %r: convex head on %d cached features (L2 %g): %s", name, len(train), solution.l2,
             ", ".join(f"{k} {v:.4f}" for k, v in sorted(scores.items())))
    path = run_dir / "checkpoints" / f"{name}-best.ckpt"
    if is_rank_zero():
        log_scores(s, run_dir, name, {**scores, "train/loss_epoch": training_loss(model, train)})
        book.save_boundary(model, path)
        history = run_dir / "history.json"
        record = {"phase": name, "epoch": 0, "global_step": 0, "train/loss": None, "val/loss": scores["val/loss"],
                  s.monitor: scores[s.monitor], "monitor": s.monitor, "lr": None, "lr_groups": [],
                  "l2": solution.l2}
        write_json(history, {"monitor": s.monitor, "epochs": merge_record(read_history(history), record)})
    book.finish(name, str(path), scores[s.monitor])
