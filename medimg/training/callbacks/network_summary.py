"""The network as a phase trains it: each block of the backbone and the head, its size, trainable or frozen.

Replaces Lightning's model summary, which lists the LightningModule's metric objects beside the network.
"""

from __future__ import annotations

import logging

from lightning.pytorch import Callback, LightningModule, Trainer

log = logging.getLogger("medimg.train")


def summary_lines(model: LightningModule) -> list[str]:
    """One line per block (in forward order) and the head: parameters, and whether they train."""
    rows = [(name, model.block_parameters(name)) for name in model.blocks]
    rows.append((f"head ({model.arch.head})", list(model.head().parameters())))
    width = max(10, *(len(name) for name, _ in rows))
    lines = [f"{'block':<{width}} {'parameters':>12}  state"]
    for name, params in rows:
        n = sum(p.numel() for p in params)
        trained = sum(p.numel() for p in params if p.requires_grad)
        state = "trains" if trained == n and n else ("frozen" if trained == 0 else f"{trained:,} train")
        lines.append(f"{name:<{width}} {n:>12,}  {state if n else '-'}")
    total = sum(p.numel() for p in model.net.parameters())
    lines.append(f"{'total':<{width}} {total:>12,}  {sum(p.numel() for p in model.trainable_parameters()):,} train")
    return lines


class NetworkSummary(Callback):
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.is_global_zero:
            log.info("%s (timm %s), phase %r:\n  %s", pl_module.hparams.backbone, pl_module.arch.model_name,
                     pl_module.phase["name"], "\n  ".join(summary_lines(pl_module)))
