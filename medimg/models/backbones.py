"""Backbones: a name -> torchvision network with a new head, plus its blocks, head and Grad-CAM layer.

Pretrained weights come through torchvision's own cache (``$TORCH_HOME/hub/checkpoints``), so a file
placed there is used without network access. ``check_weights`` finds out before any data work whether
the weights a run asks for can be had.
"""

from __future__ import annotations

import contextlib
import urllib.error
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import nn

from medimg.errors import ConfigError, UserError
from medimg.files import read_torch


@dataclass(frozen=True)
class BackboneSpec:
    builder: object
    weights: object          # torchvision WeightsEnum class
    blocks: tuple[str, ...]  # child modules in forward order (the head excluded)
    head: str                # the classification layer, replaced by Dropout + Linear(num_classes)
    gradcam_layer: str       # module whose output Grad-CAM explains by default


_RESNET_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(tvm.resnet18, tvm.ResNet18_Weights, _RESNET_BLOCKS, "fc", "layer4"),
    "resnet50": BackboneSpec(tvm.resnet50, tvm.ResNet50_Weights, _RESNET_BLOCKS, "fc", "layer4"),
}


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights that cannot be downloaded or read, or do not fit the network."""


def spec_of(name: str) -> BackboneSpec:
    if name not in BACKBONES:
        raise ConfigError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)} (backbone=<name>)")
    return BACKBONES[name]


def _imagenet_state_dict(name: str, which: str) -> dict[str, torch.Tensor]:
    enum = spec_of(name).weights
    w = enum.DEFAULT if which == "imagenet" else enum[which]
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return w.get_state_dict(progress=False, check_hash=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsUnavailableError(
            f"could not load ImageNet weights for {name} ({w.url}): {e}.\n"
            f"Offline? Put the file {Path(w.url).name} into {hub_dir} (torchvision's cache, set by TORCH_HOME), "
            f"or train without them: backbone.weights=null (random init) or backbone.weights=/path/to/state_dict.pth"
        ) from e


def _local_state_dict(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).expanduser().is_file():
        raise WeightsUnavailableError(f"backbone.weights={path!r} is neither 'imagenet', null nor an existing file")
    sd = read_torch(path, WeightsUnavailableError, "weights file")
    if isinstance(sd, dict) and "state_dict" in sd:  # a Lightning checkpoint: take the network's weights
        sd = {k.removeprefix("net."): v for k, v in sd["state_dict"].items() if k.startswith("net.")}
    return sd


def pretrained_state_dict(name: str, weights: str) -> dict[str, torch.Tensor]:
    """The state dict that ``backbone.weights`` names (``imagenet``, a torchvision weights name, or a file)."""
    if weights == "imagenet" or weights.startswith("IMAGENET1K"):
        return _imagenet_state_dict(name, weights)
    return _local_state_dict(weights)


def check_weights(name: str, weights: str | None) -> None:
    """Fail now, before data work, when ``weights`` cannot be had (downloads ImageNet weights into the cache)."""
    spec_of(name)
    if weights:
        pretrained_state_dict(name, weights)


def build_backbone(name: str, num_classes: int, weights: str | None = None, dropout: float = 0.0) -> nn.Module:
    """torchvision ``name`` with ``weights`` loaded and its head replaced by Dropout + Linear(num_classes)."""
    spec = spec_of(name)
    net = spec.builder(weights=None)
    if weights:
        sd = {k: v for k, v in pretrained_state_dict(name, weights).items() if not k.startswith(spec.head + ".")}
        try:
            missing, unexpected = net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise WeightsUnavailableError(f"weights {weights!r} do not fit {name}: {str(e)[:500]}") from e
        missing = [k for k in missing if not k.startswith(spec.head + ".")]
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"weights {weights!r} do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    in_features = getattr(net, spec.head).in_features
    setattr(net, spec.head, nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes)))
    return net


def blocks_of(name: str) -> tuple[str, ...]:
    return spec_of(name).blocks


def head_of(name: str) -> str:
    return spec_of(name).head


@contextlib.contextmanager
def head_removed(net: nn.Module, name: str) -> Iterator[nn.Module]:
    """Inside the block, ``net`` returns its pooled features (the input of the head)."""
    head_name = head_of(name)
    head = getattr(net, head_name)
    setattr(net, head_name, nn.Identity())
    try:
        yield net
    finally:
        setattr(net, head_name, head)
