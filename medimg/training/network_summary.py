"""The network as a phase trains it: each block of the backbone and the head, its size, trainable or frozen.

Replaces Lightning's model summary, which lists the LightningModule's metric objects beside the network.
"""

from __future__ import annotations

import logging

from lightning.pytorch import Callback, LightningModule, Trainer

from medimg.models.backbones import head_of

log = logging.getLogger("medimg.train")


def summary_lines(model: LightningModule) -> list[str]:
    net, head = model.net, head_of(model.hparams.backbone)
    rows = [(name, getattr(net, name)) for name in (*model.blocks, head)]
    lines = [f"{'block':<10} {'parameters':>12}  state"]
    for name, module in rows:
        params = list(module.parameters())
        n = sum(p.numel() for p in params)
        trained = sum(p.numel() for p in params if p.requires_grad)
        state = "trains" if trained == n and n else ("frozen" if trained == 0 else f"{trained:,} train")
        lines.append(f"{name:<10} {n:>12,}  {state if n else '-'}")
    total = sum(p.numel() for p in net.parameters())
    lines.append(f"{'total':<10} {total:>12,}  {sum(p.numel() for p in model.trainable_parameters()):,} train")
    return lines


class NetworkSummary(Callback):
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            log.info("%s (%s), phase %r:\n  %s", pl_module.hparams.backbone, type(pl_module.net).__name__,
                     pl_module.phase["name"], "\n  ".join(summary_lines(pl_module)))
