"""Freezing: which parameters train in a phase, and keeping frozen BatchNorm statistics fixed."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from medimg.errors import ConfigError


def resolve_blocks(train_blocks: str | Sequence[str] | None, all_blocks: Sequence[str]) -> list[str]:
    """``'all'`` -> every block; a list -> checked against the backbone's blocks."""
    if train_blocks in (None, "none"):
        return []
    if train_blocks == "all":
        return list(all_blocks)
    if isinstance(train_blocks, str):
        train_blocks = [train_blocks]
    unknown = [b for b in train_blocks if b not in all_blocks]
    if unknown:
        raise ConfigError(f"train_blocks {unknown} are not blocks of this backbone; choose from {list(all_blocks)}")
    return list(train_blocks)


def apply_freeze(net: nn.Module, trainable: Sequence[str], all_blocks: Sequence[str], head: str = "fc") -> list[nn.Module]:
    """Make ``head`` and ``trainable`` blocks trainable, freeze the other blocks; return the frozen modules."""
    frozen = []
    for name in all_blocks:
        module = getattr(net, name)
        train = name in trainable
        for p in module.parameters():
            p.requires_grad_(train)
        if not train:
            frozen.append(module)
    for p in getattr(net, head).parameters():
        p.requires_grad_(True)
    return frozen
