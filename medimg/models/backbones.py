"""Backbones: a name -> a timm network with a new head, plus what medimg needs to know about it.

Every backbone is a timm model (``timm.create_model``): ``resnet18`` and ``resnet50`` are names for timm's
``resnet18.tv_in1k`` and ``resnet50.tv2_in1k`` (torchvision's ResNets and ImageNet weights: the same
architecture, parameter names and files as torchvision), any other name is timm's (``efficientnet_b0``,
``convnext_tiny``, ``vit_small_patch16_224.augreg_in21k_ft_in1k``, ...). ``BackboneInfo`` describes a
network from its own structure: its blocks (timm's ``group_matcher``, see blocks.py), its classification head,
feature size, stages (``feature_info``) and the layer Grad-CAM explains by default for an input size.
``check_weights`` finds out before any data work whether the weights a run asks for can be had (weights.py).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from medimg.errors import ConfigError
from medimg.models.blocks import Block, network_blocks
from medimg.models.weights import WeightsUnavailableError, fitted, pretrained_state_dict, read_state_dict

__all__ = ["WeightsUnavailableError", "BackboneInfo", "backbone_info", "build_backbone", "check_weights",
           "blocks_of", "head_of", "head_removed", "pretrained_preprocess", "timm_name"]

ALIASES = {"resnet18": "resnet18.tv_in1k", "resnet50": "resnet50.tv2_in1k"}  # torchvision's ImageNet weights
# torchvision's ResNets start (random init) exactly as torchvision builds them, bit for bit: its 1000-class
# classifier drawn before the convolutions, no zero-initialised last BatchNorm in a block
TORCHVISION_INIT = {name: {"num_classes": 1000, "zero_init_last": False} for name in ALIASES.values()}
MIN_CAM_SIDE = 6  # the default Grad-CAM stage of a CNN is the deepest whose map is at least this many cells wide
CONF_BACKBONES = Path(__file__).resolve().parents[2] / "conf" / "backbone"


def timm_name(name: str) -> str:
    """The timm model name (with its pretrained tag) that backbone ``name`` stands for."""
    import timm
    from timm.models import get_pretrained_cfg

    model_name = ALIASES.get(name, name)
    if not timm.is_model(model_name):
        configured = sorted(p.stem for p in CONF_BACKBONES.glob("*.yaml") if p.stem != "timm")
        close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
        raise ConfigError(f"unknown backbone {name!r}; choose one of {configured} (backbone=<name>), or any timm "
                          f"model (backbone=timm backbone.name=<name>, see timm.list_models())"
                          + (f"; close timm names: {close}" if close else ""))
    try:
        get_pretrained_cfg(model_name)
    except RuntimeError:  # an unknown pretrained tag
        arch = model_name.split(".")[0]
        raise ConfigError(f"backbone {name!r}: timm knows no pretrained tag {model_name.partition('.')[2]!r} for "
                          f"{arch}; choose one of {timm.list_pretrained(arch + '.*')}") from None
    return model_name


def pretrained_cfg_of(name: str) -> dict[str, Any]:
    """timm's pretrained config of backbone ``name`` (input size, mean, std, interpolation, crop, weights)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(timm_name(name))
    return cfg.to_dict() if cfg is not None else {}


def pretrained_preprocess(name: str) -> dict[str, Any]:
    """The preprocessing backbone ``name`` was pretrained with, under the dataset's key names:
    ``img_size``, ``eval_resize`` (1 / crop fraction), ``interpolation``, ``mean``, ``std``."""
    from timm.data import resolve_data_config

    d = resolve_data_config({}, pretrained_cfg=pretrained_cfg_of(name))
    return {"img_size": int(d["input_size"][-1]), "eval_resize": round(1.0 / float(d["crop_pct"]), 6),
            "interpolation": str(d["interpolation"]), "mean": [float(v) for v in d["mean"]],
            "std": [float(v) for v in d["std"]]}


@dataclass(frozen=True)
class BackboneInfo:
    """What medimg needs to know about a built network, read from its own structure."""

    name: str                            # the backbone's name in the config
    model_name: str                      # timm's name, with its pretrained tag
    blocks: tuple[Block, ...]            # trainable groups in forward order, the head left out
    head: str                            # module path of the classification head
    feature_dim: int                     # size of the pooled features the head reads
    stages: tuple[tuple[str, int], ...]  # (module path, stride) of each stage's output (timm's feature_info)
    prefix_tokens: int | None            # a ViT: tokens before the patch grid (cls, registers); None: feature maps
    maps_last: bool                      # stage outputs are (B, H, W, C) (e.g. Swin), not (B, C, H, W)

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.blocks]

    def block(self, name: str) -> Block:
        for b in self.blocks:
            if b.name == name:
                return b
        raise ConfigError(f"{name!r} is not a block of backbone {self.name}; choose from {self.block_names}")

    def cam_layer(self, img_size: int | None = None) -> str:
        """The layer Grad-CAM explains by default: a ViT's last block's norm; a CNN's deepest stage whose map is
        at least MIN_CAM_SIDE cells wide at ``img_size`` (the deepest stage when the size is not known)."""
        if self.prefix_tokens is not None:
            return f"{self.stages[-1][0]}.norm1"
        if img_size is None:
            return self.stages[-1][0]
        fine = [path for path, stride in self.stages if img_size // stride >= MIN_CAM_SIDE]
        return fine[-1] if fine else self.stages[0][0]

    def reshape_transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """What turns a target layer's output into (B, C, H, W) maps for pytorch-grad-cam (None: it already is)."""
        if self.prefix_tokens is not None:
            return functools.partial(tokens_to_maps, prefix=self.prefix_tokens)
        return channels_first if self.maps_last else None


def tokens_to_maps(tokens: torch.Tensor, prefix: int) -> torch.Tensor:
    """ViT tokens (B, prefix + h*w, C) -> (B, C, h, w) maps of the patch grid (pytorch-grad-cam's vit_example)."""
    grid = tokens[:, prefix:, :]
    side = int(round(grid.shape[1] ** 0.5))
    if side * side != grid.shape[1]:
        raise ValueError(f"{grid.shape[1]} patch tokens do not form a square grid; explain a square input")
    return grid.reshape(grid.shape[0], side, side, grid.shape[2]).permute(0, 3, 1, 2)


def channels_first(maps: torch.Tensor) -> torch.Tensor:
    return maps.permute(0, 3, 1, 2)


def describe(net: nn.Module, name: str) -> BackboneInfo:
    """The BackboneInfo of a timm network ``net`` built for backbone ``name``."""
    head = _head_path(net, name)
    classifier = net.get_submodule(head)
    linear = classifier if isinstance(classifier, nn.Linear) else classifier[-1]
    info = getattr(net, "feature_info", None) or []
    stages = tuple((f["module"], int(f["reduction"])) for f in info)
    if not stages:
        raise ConfigError(f"timm model {name} does not describe its stages (feature_info); it is not supported")
    is_vit = hasattr(net, "num_prefix_tokens") and hasattr(net, "blocks") and hasattr(net.blocks[-1], "norm1")
    return BackboneInfo(name=name, model_name=timm_name(name), blocks=network_blocks(net, head), head=head,
                        feature_dim=int(linear.in_features), stages=stages,
                        prefix_tokens=int(net.num_prefix_tokens) if is_vit else None,
                        maps_last=getattr(net, "output_fmt", "NCHW") == "NHWC")


def _head_path(net: nn.Module, name: str) -> str:
    classifier = net.get_classifier()
    for path, module in net.named_modules():
        if module is classifier and path:
            return path
    raise ConfigError(f"timm model {name} has no single classification layer (get_classifier() gave "
                      f"{type(classifier).__name__}); it is not supported")


@functools.cache
def backbone_info(name: str) -> BackboneInfo:
    """The BackboneInfo of backbone ``name`` (from a network built without memory, on the meta device)."""
    try:
        with torch.device("meta"):
            net = _create(timm_name(name), 2, None)
    except (RuntimeError, NotImplementedError):  # an initialiser that needs real tensors
        net = _create(timm_name(name), 2, None)
    return describe(net, name)


def _create(model_name: str, num_classes: int, img_size: int | None) -> nn.Module:
    import timm

    size = {}
    cfg = timm.models.get_pretrained_cfg(model_name)
    if img_size and cfg is not None and cfg.fixed_input_size:
        size["img_size"] = int(img_size)  # a ViT's position embedding is built for its input size
    kwargs = {"num_classes": num_classes, **size, **TORCHVISION_INIT.get(model_name, {})}
    return timm.create_model(model_name, pretrained=False, **kwargs)


def build_backbone(name: str, num_classes: int, weights: str | None = None, dropout: float = 0.0,
                   img_size: int | None = None) -> nn.Module:
    """timm's ``name`` for ``img_size`` inputs with ``weights`` loaded (``imagenet``: its pretrained tag's, or a
    file) and its classification layer replaced by Dropout + Linear(num_classes)."""
    info = backbone_info(name)
    net = _create(info.model_name, num_classes, img_size)
    if weights:
        sd = _state_dict(name, weights)
        net.load_state_dict(fitted(net, sd, info.head, name, weights), strict=False)
    net.set_submodule(info.head, nn.Sequential(nn.Dropout(dropout), nn.Linear(info.feature_dim, num_classes)))
    return net


def _state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    if weights == "imagenet":
        return pretrained_state_dict(name, pretrained_cfg_of(name))
    return read_state_dict(weights)


def check_weights(name: str, weights: str | None) -> None:
    """Fail now, before data work, when ``name`` is unknown or ``weights`` cannot be had or do not fit
    (downloads pretrained weights into their cache)."""
    info = backbone_info(name)
    if weights:
        with torch.device("meta"):
            net = _create(info.model_name, 2, None)
        fitted(net, _state_dict(name, weights), info.head, name, weights)


def blocks_of(name: str) -> tuple[str, ...]:
    return tuple(backbone_info(name).block_names)


def head_of(name: str) -> str:
    return backbone_info(name).head


@contextlib.contextmanager
def head_removed(net: nn.Module, name: str) -> Iterator[nn.Module]:
    """Inside the block, ``net`` (built for backbone ``name``) returns its pooled features (the head's input)."""
    path = head_of(name)
    head = net.get_submodule(path)
    net.set_submodule(path, nn.Identity())
    try:
        yield net
    finally:
        net.set_submodule(path, head)
