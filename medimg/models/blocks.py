"""Blocks: a network's trainable groups in forward order (stem, stages), read from the model's own structure.

timm describes every model's parts with ``group_matcher(coarse=True)``: the stem, then one group per stage
(ResNet ``layer1..4``, ConvNeXt ``stages.0..3``, ViT ``blocks.0..11``, EfficientNet ``blocks.0..6``, DenseNet
``denseblockN`` with its transition). Parameters no matcher names (a final norm such as ViT's ``norm``,
ConvNeXt's ``head.norm`` or DenseNet's ``norm5``) join the last stage, as timm itself does for the ones it
marks; the classification head is never part of a block. A block is a set of parameters plus the largest
modules that hold only its parameters: those modules are put in eval mode while the block is frozen.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class Block:
    """One trainable group of the backbone."""

    name: str                 # a module path (``layer4``, ``stages.3``), ``stem``, or paths joined by ``+``
    params: tuple[str, ...]   # its parameter names in the network
    modules: tuple[str, ...]  # the largest modules holding only its parameters (frozen: kept in eval mode)


def network_blocks(net: nn.Module, head: str) -> tuple[Block, ...]:
    """The blocks of ``net`` in forward order; ``head`` (a module path) is left out."""
    groups = [[p for p in g if not _under(p, head)] for g in _parameter_groups(net, head)]
    groups = [g for g in groups if g]
    owner = {p: i for i, g in enumerate(groups) for p in g}
    modules = _largest_modules(net, owner)
    blocks: list[Block] = []
    for i, params in enumerate(groups):
        name = _block_name(i, modules[i], params)
        if any(b.name == name for b in blocks):
            name = f"{name}#{i}"
        blocks.append(Block(name, tuple(params), tuple(modules[i])))
    return tuple(blocks)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _parameter_groups(net: nn.Module, head: str) -> list[list[str]]:
    """timm's coarse parameter groups, the unmatched ones (grouped with the head) moved into the last stage;
    for a network without a group matcher, one group per top-level child."""
    from timm.models import group_parameters

    matcher = getattr(net, "group_matcher", None)
    try:
        grouped = group_parameters(net, matcher(coarse=True)) if matcher is not None else None
    except NotImplementedError:
        grouped = None
    if grouped is None:
        children = [[f"{c}.{p}" for p, _ in m.named_parameters()] for c, m in net.named_children()]
        return [g for g in children if g]
    groups = [list(grouped[k]) for k in sorted(grouped)]
    with_head = [i for i, g in enumerate(groups) if any(_under(p, head) for p in g)]
    if with_head and with_head[0] > 0:
        i = with_head[0]
        groups[i - 1] += [p for p in groups[i] if not _under(p, head)]
        groups[i] = [p for p in groups[i] if _under(p, head)]
    return groups


def _largest_modules(net: nn.Module, owner: dict[str, int]) -> dict[int, list[str]]:
    """For each group, the largest modules whose parameters all belong to it (in forward order)."""
    out: dict[int, list[str]] = {i: [] for i in set(owner.values())}
    covered: set[str] = set()
    for name, module in net.named_modules():
        if not name:
            continue
        parent = name.rpartition(".")[0]
        if parent in covered:
            covered.add(name)
            continue
        ids = {owner.get(f"{name}.{p}") for p, _ in module.named_parameters()}
        if len(ids) == 1 and None not in ids:
            out[ids.pop()].append(name)
            covered.add(name)
    return out


def _block_name(index: int, modules: list[str], params: list[str]) -> str:
    """The module path when one module holds the whole block; ``stem`` for a first block of several parts;
    else the parts joined by ``+`` (``blocks.6+conv_head+bn2``)."""
    loose = [p for p in params if not any(_under(p, m) for m in modules)]  # e.g. a ViT's cls_token
    if len(modules) == 1 and not loose:
        return modules[0]
    if index == 0:
        return "stem"
    return "+".join([*modules, *loose])
