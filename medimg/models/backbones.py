"""Backbones: a name -> torchvision network with a new head, plus which blocks count as "last".

Pretrained weights come through torchvision's own cache (``$TORCH_HOME/hub/checkpoints``), so a file
placed there is used without network access.
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision.models as tvm
from torch import nn


@dataclass(frozen=True)
class BackboneSpec:
    builder: object
    weights: object          # torchvision WeightsEnum class
    blocks: tuple[str, ...]  # child modules in forward order (the head is "fc")
    gradcam_layer: str       # module whose output Grad-CAM explains by default


_RESNET_BLOCKS = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
BACKBONES: dict[str, BackboneSpec] = {
    "resnet18": BackboneSpec(tvm.resnet18, tvm.ResNet18_Weights, _RESNET_BLOCKS, "layer4"),
    "resnet34": BackboneSpec(tvm.resnet34, tvm.ResNet34_Weights, _RESNET_BLOCKS, "layer4"),
    "resnet50": BackboneSpec(tvm.resnet50, tvm.ResNet50_Weights, _RESNET_BLOCKS, "layer4"),
}
HEAD = "fc"


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights that cannot be downloaded or read."""


def _imagenet_state_dict(name: str, which: str) -> dict[str, torch.Tensor]:
    enum = BACKBONES[name].weights
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
    p = Path(path).expanduser()
    if not p.is_file():
        raise WeightsUnavailableError(
            f"backbone.weights={path!r} is neither 'imagenet', null nor an existing file"
        )
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsUnavailableError(f"cannot read weights file {p}: {e}") from e
    if isinstance(sd, dict) and "state_dict" in sd:  # a Lightning checkpoint: take the network's weights
        sd = {k.removeprefix("net."): v for k, v in sd["state_dict"].items() if k.startswith("net.")}
    return sd


def build_backbone(name: str, num_classes: int, weights: str | None = None, dropout: float = 0.2) -> nn.Module:
    """torchvision ``name`` with ``weights`` loaded and ``fc`` replaced by Dropout + Linear(num_classes)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {sorted(BACKBONES)}")
    net = BACKBONES[name].builder(weights=None)
    if weights:
        if weights == "imagenet" or weights.startswith("IMAGENET1K"):
            sd = _imagenet_state_dict(name, weights)
        else:
            sd = _local_state_dict(weights)
        sd = {k: v for k, v in sd.items() if not k.startswith(HEAD + ".")}
        try:
            missing, unexpected = net.load_state_dict(sd, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise WeightsUnavailableError(f"weights {weights!r} do not fit {name}: {str(e)[:500]}") from e
        missing = [k for k in missing if not k.startswith(HEAD + ".")]
        if missing or unexpected:
            raise WeightsUnavailableError(
                f"weights {weights!r} do not fit {name}: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )
    in_features = net.fc.in_features
    net.fc = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_features, num_classes))
    return net


def blocks_of(name: str) -> tuple[str, ...]:
    return BACKBONES[name].blocks
