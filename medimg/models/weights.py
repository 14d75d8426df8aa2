"""Pretrained weights: where ``backbone.weights`` comes from, and whether it fits the network.

``imagenet`` means the pretrained weights of the model's timm tag (``resnet18`` is ``resnet18.tv_in1k``):
torchvision's files (``download.pytorch.org``) come through torch.hub's cache, ``$TORCH_HOME/hub/checkpoints``,
as torchvision itself reads them; every other tag from the Hugging Face hub cache (``$HF_HUB_CACHE``, by
default ``~/.cache/huggingface/hub``; ``HF_HUB_OFFLINE=1`` reads it without asking the network). A path
is a state dict file (``.pth``/``.pt``/``.bin``, ``.safetensors``, or a medimg/Lightning checkpoint). Offline,
the error says which file to put where, or how to pass it as ``backbone.weights=<path>``.
"""

from __future__ import annotations

import importlib
import urllib.error
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from medimg.errors import UserError
from medimg.files import read_torch

TORCHVISION_URL = "https://download.pytorch.org/"
HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm's hub repositories hold, in timm's order
# without pretrained weights the recipe must train the backbone too: two_stage's first phase would keep a random
# backbone frozen (conf/stage/scratch.yaml trains every layer, as experiment=synthetic does)
FROM_SCRATCH = ("train from random weights instead: stage=scratch backbone.weights=null (every layer trains; "
                "backbone.weights=null alone keeps the stage's frozen head phase on a random backbone)")


class WeightsUnavailableError(UserError, RuntimeError):
    """Pretrained weights that cannot be downloaded or read, or do not fit the network."""


def pretrained_state_dict(name: str, pretrained_cfg: Mapping) -> dict[str, torch.Tensor]:
    """The weights of ``pretrained_cfg`` (a timm pretrained config) from torch.hub's or the hub's cache."""
    url, hub_id = pretrained_cfg.get("url") or "", pretrained_cfg.get("hf_hub_id") or ""
    if url.startswith(TORCHVISION_URL) or (url and not hub_id and not pretrained_cfg.get("custom_load")):
        return _from_torch_hub(name, url)
    if hub_id:
        return _from_hf_hub(name, hub_id)
    raise WeightsUnavailableError(
        f"timm has no pretrained weights for {name} ({pretrained_cfg.get('architecture')}); "
        f"use backbone.weights=/path/to/weights, or {FROM_SCRATCH}")


def _from_torch_hub(name: str, url: str) -> dict[str, torch.Tensor]:
    hub_dir = Path(torch.hub.get_dir()) / "checkpoints"
    try:
        return torch.hub.load_state_dict_from_url(url, map_location="cpu", progress=False, check_hash=True,
                                                  weights_only=True)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsUnavailableError(
            f"could not load the pretrained weights of {name} ({url}): {e}.\n"
            f"Offline? Put the file {Path(url).name} into {hub_dir} (torch.hub's cache, set by TORCH_HOME), "
            f"or pass a file: backbone.weights=/path/to/state_dict.pth; or {FROM_SCRATCH}"
        ) from e


def _from_hf_hub(name: str, hub_id: str) -> dict[str, torch.Tensor]:
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    error: Exception | None = None
    for filename in HUB_FILES:
        try:
            return read_state_dict(hf_hub_download(hub_id, filename))
        except (EntryNotFoundError, OSError) as e:  # not cached and offline, no such file (try the next), HTTP
            error = error or e
    repo = Path(constants.HF_HUB_CACHE) / f"models--{hub_id.replace('/', '--')}"
    raise WeightsUnavailableError(
        f"could not load the pretrained weights of {name} from the Hugging Face hub ({hub_id}): {error}.\n"
        f"Offline? Download {HUB_FILES[0]} from https://huggingface.co/{hub_id} and either pass it as "
        f"backbone.weights=/path/to/{HUB_FILES[0]}, or place it in the hub cache as "
        f"{repo}/snapshots/<revision>/{HUB_FILES[0]} with the word <revision> written into {repo}/refs/main "
        f"(then set HF_HUB_OFFLINE=1); or {FROM_SCRATCH}"
    ) from error


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict file: safetensors, a torch file, or a medimg/Lightning checkpoint (its ``net.`` weights)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(f"backbone.weights={str(path)!r} is neither 'imagenet', null nor an existing file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as e:  # safetensors raises its own error types for damaged files
            raise WeightsUnavailableError(f"cannot read the weights file {path}: {e}") from e
    sd = read_torch(path, WeightsUnavailableError, "weights file")
    if isinstance(sd, dict) and "state_dict" in sd:  # a Lightning checkpoint: take the network's weights
        sd = {k.removeprefix("net."): v for k, v in sd["state_dict"].items() if k.startswith("net.")}
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise WeightsUnavailableError(f"the weights file {path} holds no state dict (name -> tensor)")
    return sd


def fitted(net: nn.Module, sd: dict[str, torch.Tensor], head: str, name: str, weights: str) -> dict:
    """``sd`` made to fit ``net`` (timm's own conversion for its model, e.g. a ViT's position embedding resampled
    to the input size), without the classification head; a WeightsUnavailableError when it does not fit."""
    convert = getattr(importlib.import_module(type(net).__module__), "checkpoint_filter_fn", None)
    if convert is not None:
        sd = convert(sd, net)
    sd = {k: v for k, v in sd.items() if not k.startswith(head + ".")}
    expected = {k: v.shape for k, v in net.state_dict().items() if not k.startswith(head + ".")}
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    wrong = [f"{k} {tuple(sd[k].shape)} (network: {tuple(s)})" for k, s in expected.items()
             if k in sd and tuple(sd[k].shape) != tuple(s)]
    if missing or unexpected or wrong:
        raise WeightsUnavailableError(
            f"weights {weights!r} do not fit {name}: {len(missing)} missing, e.g. {missing[:4]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:4]}; {len(wrong)} of another shape, e.g. {wrong[:3]}. "
            "Choose the backbone they were saved from (backbone=<name> or backbone=timm backbone.name=<timm name>)")
    return sd
