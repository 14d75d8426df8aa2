"""Freezing: which blocks train in a phase, and keeping frozen blocks exactly as they are.

``train_blocks`` names blocks of the backbone (see blocks.py): ``[]`` (or ``none``) = a frozen backbone,
``all``, ``last`` = the last block, a count ``n`` = the last n blocks, a block name or a list of names.
A frozen block's parameters get no gradients, and its modules stay in eval mode while the rest trains:
BatchNorm keeps its running statistics and dropout / stochastic depth stay off. LayerNorm (ConvNeXt, ViT,
Swin) has no running statistics: frozen, its weight and bias simply do not change.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medimg.errors import ConfigError
from medimg.models.blocks import Block

KEYWORDS = "[] (none), all, last, a count of last blocks, a block name or a list of block names"


def resolve_blocks(train_blocks: str | int | Sequence[str] | None, all_blocks: Sequence[str]) -> list[str]:
    """The block names ``train_blocks`` means for a backbone with blocks ``all_blocks`` (in forward order)."""
    all_blocks = list(all_blocks)
    if train_blocks in (None, "none"):
        return []
    if train_blocks == "all":
        return all_blocks
    if train_blocks == "last":
        return all_blocks[-1:]
    if isinstance(train_blocks, int) and not isinstance(train_blocks, bool):
        if not 0 <= train_blocks <= len(all_blocks):
            raise ConfigError(f"train_blocks={train_blocks}: this backbone has {len(all_blocks)} blocks "
                              f"{all_blocks}; give a count from 0 to {len(all_blocks)}")
        return all_blocks[len(all_blocks) - train_blocks:]
    if isinstance(train_blocks, str):
        train_blocks = [train_blocks]
    unknown = [b for b in train_blocks if b not in all_blocks]
    if unknown:
        raise ConfigError(f"train_blocks {unknown} are not blocks of this backbone; choose from {all_blocks} "
                          f"({KEYWORDS})")
    return [b for b in all_blocks if b in train_blocks]  # forward order


def apply_freeze(net: nn.Module, trainable: Sequence[str], blocks: Sequence[Block], head: str) -> list[nn.Module]:
    """Make ``head`` (a module path) and the ``trainable`` blocks trainable, freeze the other blocks; return the
    frozen blocks' modules (to be kept in eval mode)."""
    params = dict(net.named_parameters())
    frozen = []
    for block in blocks:
        train = block.name in trainable
        for name in block.params:
            params[name].requires_grad_(train)
        if not train:
            frozen += [net.get_submodule(m) for m in block.modules]
    for p in net.get_submodule(head).parameters():
        p.requires_grad_(True)
    return frozen
