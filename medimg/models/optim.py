"""The optimiser and learning-rate schedule of one phase, from the ``optim`` config group and the phase.

Parameter groups (discriminative rates): the head at the phase's lr, and each trained backbone block, from the
last one back, at ``lr * lr_decay**k``. The cosine schedule runs per optimiser step over the phase's planned
steps, after ``warmup_steps`` of linear warmup; ``step`` and ``plateau`` run per epoch.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from medimg.errors import ConfigError


def build_optimizer(groups: list[dict[str, Any]], optim: dict[str, Any]) -> torch.optim.Optimizer:
    """``groups``: torch parameter groups, each with its own ``lr``."""
    kind, wd = optim["optimizer"], optim["weight_decay"]
    if kind == "adam":
        return torch.optim.Adam(groups, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(groups, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(groups, momentum=optim["momentum"], weight_decay=wd, nesterov=True)
    raise ConfigError(f"unknown optim.optimizer={kind!r}; choose adam, adamw or sgd")


def warmup_cosine(step: int, warmup: int, total: int, cosine: bool) -> float:
    """The lr factor at optimiser ``step``: linear from 1/warmup to 1, then cosine to 0 (or flat)."""
    if step < warmup:
        return (step + 1) / warmup
    if not cosine:
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_schedule(opt: torch.optim.Optimizer, optim: dict[str, Any], phase: dict[str, Any]) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` return value: the optimiser and (unless ``none`` without warmup) its
    schedule. ``phase`` holds ``epochs``, ``total_steps`` and ``warmup_steps``."""
    kind, warmup = optim["scheduler"], int(phase["warmup_steps"])
    if kind in ("cosine", "none") and (kind == "cosine" or warmup):
        total = int(phase["total_steps"])
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda step: warmup_cosine(step, warmup, total, cosine=kind == "cosine"))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    if kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=optim["step_size"], gamma=optim["gamma"])
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
    if kind == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=optim["gamma"], patience=1)
        # strict=False: on a small set's epochs without validation (trainer.val_min_steps) it waits for the next
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss", "strict": False}}
    if kind == "none":
        return {"optimizer": opt}
    raise ConfigError(f"unknown optim.scheduler={kind!r}; choose cosine, step, plateau or none")
