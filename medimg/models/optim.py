"""The optimiser and learning-rate schedule of one phase, from the ``optim`` config group."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from medimg.errors import ConfigError


def build_optimizer(params: Iterable[torch.nn.Parameter], optim: dict[str, Any], lr: float) -> torch.optim.Optimizer:
    kind, wd = optim["optimizer"], optim["weight_decay"]
    if kind == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=wd)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    if kind == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=optim["momentum"], weight_decay=wd, nesterov=True)
    raise ConfigError(f"unknown optim.optimizer={kind!r}; choose adam, adamw or sgd")


def build_schedule(opt: torch.optim.Optimizer, optim: dict[str, Any], epochs: int) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` return value: the optimiser and (unless ``none``) its schedule."""
    kind = optim["scheduler"]
    if kind == "cosine":
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, epochs))
    elif kind == "step":
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=optim["step_size"], gamma=optim["gamma"])
    elif kind == "plateau":
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=optim["gamma"], patience=1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}
    elif kind == "none":
        return {"optimizer": opt}
    else:
        raise ConfigError(f"unknown optim.scheduler={kind!r}; choose cosine, step, plateau or none")
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
