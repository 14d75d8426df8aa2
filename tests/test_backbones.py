"""Backbones: ImageNet weights through torchvision's cache (no network), local files, clear offline errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pytest
import torch
import torchvision.models as tvm

from medimg.models.backbones import WeightsUnavailableError, build_backbone
from medimg.models.freezing import apply_freeze, resolve_blocks


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def test_imagenet_weights_load_from_torchvision_cache(torch_home):
    torch.manual_seed(1)
    reference = tvm.resnet18()
    cache = torch_home / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    # the file name torchvision looks for; check_hash compares its hash prefix only on download
    torch.save(reference.state_dict(), cache / Path(tvm.ResNet18_Weights.IMAGENET1K_V1.url).name)
    net = build_backbone("resnet18", num_classes=3, weights="imagenet")
    for k, v in reference.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(net.state_dict()[k], v), k
    assert net.fc[1].out_features == 3 and isinstance(net.fc[0], torch.nn.Dropout)


def test_offline_imagenet_weights_give_a_clear_error(torch_home, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(WeightsUnavailableError) as err:
        build_backbone("resnet50", num_classes=2, weights="imagenet")
    msg = str(err.value)
    assert "backbone.weights=null" in msg and "resnet50-" in msg and str(torch_home) in msg


def test_local_state_dict_and_bad_paths(tmp_path):
    torch.manual_seed(2)
    src = build_backbone("resnet18", num_classes=5)
    path = tmp_path / "w.pth"
    torch.save(src.state_dict(), path)
    net = build_backbone("resnet18", num_classes=2, weights=str(path))
    assert torch.equal(net.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    with pytest.raises(WeightsUnavailableError, match="neither 'imagenet'"):
        build_backbone("resnet18", num_classes=2, weights=str(tmp_path / "missing.pth"))
    torch.save(src.state_dict(), path)
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet50"):
        build_backbone("resnet50", num_classes=2, weights=str(path))
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("vgg11", num_classes=2)


def test_freezing_marks_exactly_the_requested_blocks():
    net = build_backbone("resnet18", num_classes=2)
    blocks = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")
    frozen = apply_freeze(net, resolve_blocks(["layer4"], blocks), blocks)
    assert len(frozen) == 5
    assert all(p.requires_grad for p in net.layer4.parameters()) and all(p.requires_grad for p in net.fc.parameters())
    assert not any(p.requires_grad for p in net.layer3.parameters())
    assert resolve_blocks("all", blocks) == list(blocks) and resolve_blocks([], blocks) == []
    with pytest.raises(ValueError, match="layer9"):
        resolve_blocks(["layer9"], blocks)
