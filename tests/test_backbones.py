"""Backbones: every configured timm backbone fits, freezes, explains and loads weights; ImageNet weights through
torchvision's cache or the Hugging Face hub cache (no network); clear errors for names, weights and layers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from safetensors.torch import save_file

from medimg.errors import ConfigError
from medimg.explain.gradcam import compute_cams, resolve_layer
from medimg.inference import load_trained
from medimg.models.backbones import (
    WeightsUnavailableError,
    backbone_info,
    build_backbone,
    check_weights,
    pretrained_preprocess,
)
from medimg.models.freezing import apply_freeze, resolve_blocks
from medimg.train import train
from medimg.training.model import run_preprocess
from tests.conftest import TINY, compose_train, make_classifier, settings_of

ROOT = Path(__file__).resolve().parents[1]
CONFIGURED = sorted(p.stem for p in (ROOT / "conf" / "backbone").glob("*.yaml") if p.stem != "timm")
# one optimiser step per phase on 32 px images: the recipe runs, the weights move, the test stays short
FAST = ["dataset.batch_size=8", "trainer.limit_train_batches=1", "trainer.limit_val_batches=1", "calibration=none",
        "dataset.eval_batch_size=8", "stage.phases.head.feature_cache=false", "trainer.precision=32", "test=false"]


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
    x = torch.randn(2, 3, 64, 64)
    reference.fc = net.fc
    with torch.no_grad():  # timm's resnet18 computes exactly what torchvision's does
        torch.testing.assert_close(net.eval()(x), reference.eval()(x), rtol=0, atol=0)


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
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet50") as err:
        build_backbone("resnet50", num_classes=2, weights=str(path))
    assert "missing" in str(err.value) and "layer1.0.conv3.weight" in str(err.value)  # what does not fit
    with pytest.raises(WeightsUnavailableError, match="do not fit resnet50"):
        check_weights("resnet50", str(path))  # found out before any data work
    with pytest.raises(ValueError, match="unknown backbone"):
        build_backbone("resnet9000", num_classes=2)


def test_freezing_marks_exactly_the_requested_blocks():
    net = build_backbone("resnet18", num_classes=2)
    info = backbone_info("resnet18")
    blocks = info.block_names
    assert blocks == ["stem", "layer1", "layer2", "layer3", "layer4"]
    frozen = apply_freeze(net, resolve_blocks(["layer4"], blocks), info.blocks, info.head)
    assert len(frozen) == 5 and net.conv1 in frozen and net.bn1 in frozen  # conv1, bn1, layer1, layer2, layer3
    assert all(p.requires_grad for p in net.layer4.parameters()) and all(p.requires_grad for p in net.fc.parameters())
    assert not any(p.requires_grad for p in net.layer3.parameters())
    assert resolve_blocks("all", blocks) == list(blocks) and resolve_blocks([], blocks) == []
    with pytest.raises(ValueError, match="layer9"):
        resolve_blocks(["layer9"], blocks)


def test_train_blocks_keywords_work_on_every_family():
    for name in CONFIGURED:
        blocks = backbone_info(name).block_names
        assert resolve_blocks("last", blocks) == blocks[-1:] == resolve_blocks(1, blocks)
        assert resolve_blocks(2, blocks) == blocks[-2:] and resolve_blocks(0, blocks) == []
        assert resolve_blocks([blocks[-1], blocks[1]], blocks) == [blocks[1], blocks[-1]]  # forward order
        assert resolve_blocks("none", blocks) == [] and resolve_blocks("all", blocks) == blocks
    with pytest.raises(ConfigError, match=r"has 13 blocks .*blocks\.11\+norm.*from 0 to 13"):
        resolve_blocks(14, backbone_info("vit_small_patch16_224").block_names)


@pytest.mark.parametrize("name", CONFIGURED)
def test_blocks_cover_the_backbone_in_forward_order_and_frozen_ones_stay_in_eval_mode(name):
    model = make_classifier(["a", "b", "c"], f"backbone={name}", "dataset.img_size=32")
    info = model.arch
    params = [n for n, _ in model.net.named_parameters()]
    in_blocks = [p for b in info.blocks for p in b.params]
    head = [p for p in params if p.startswith(info.head + ".")]
    assert sorted(in_blocks + head) == sorted(params) and len(set(in_blocks)) == len(in_blocks)
    assert in_blocks == [p for p in params if p in set(in_blocks)]  # blocks follow the network's own order
    model.set_phase("finetune", "last", 1e-3, 1)
    model.train()
    last = info.blocks[-1]
    for b in info.blocks:
        for m in b.modules:
            assert model.net.get_submodule(m).training == (b is last), (b.name, m)
    assert {id(p) for p in model.trainable_parameters()} == \
        {id(p) for p in [*model.block_parameters(last.name), *model.head().parameters()]}
    assert model.head()[-1].in_features == info.feature_dim


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGURED)
def test_two_stage_fit_from_a_local_weights_file(name, tmp_path, data_dir):
    """The whole recipe on 32 px images, starting from a weights file: the head phase changes only the head, the
    fine-tune phase only the configured last blocks (frozen BatchNorm statistics included); the checkpoint keeps
    the backbone's preprocessing; Grad-CAM explains its default layer."""
    torch.manual_seed(0)
    start = build_backbone(name, num_classes=3, img_size=32)
    weights = tmp_path / "start.safetensors"
    save_file({k: v.contiguous() for k, v in start.state_dict().items()}, str(weights))
    cfg = compose_train(tmp_path / "run", data_dir, [*TINY, *FAST, f"backbone={name}", f"backbone.weights={weights}"])
    train(cfg)
    info, init = backbone_info(name), start.state_dict()
    ckpts = tmp_path / "run" / "checkpoints"
    head_phase, finetune = (_net_state(ckpts / f"{p}-best.ckpt") for p in ("head", "finetune"))
    trained = resolve_blocks(settings_of(cfg).backbone.last_blocks, info.block_names)
    for block in info.blocks:
        keys = _tensors_of(block, init)
        assert all(torch.equal(head_phase[k], init[k]) for k in keys), f"{block.name} changed in the head phase"
        unchanged = all(torch.equal(finetune[k], init[k]) for k in keys)
        assert unchanged == (block.name not in trained), f"{block.name}: trained {trained}"
    assert not torch.equal(head_phase[f"{info.head}.1.weight"], init[f"{info.head}.1.weight"])

    model = load_trained(ckpts / "best.ckpt")
    expected = pretrained_preprocess(name)
    assert model.preprocess.mean == tuple(expected["mean"]) and model.preprocess.img_size == 32
    assert model.preprocess.interpolation == expected["interpolation"]
    cams = compute_cams(model.model, torch.randn(2, 3, 32, 32), [0, 1])
    assert cams.shape == (2, 32, 32) and np.isfinite(cams).all() and 0 <= cams.min() <= cams.max() <= 1 + 1e-6


def _net_state(path: Path) -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}


def _tensors_of(block, state: dict[str, torch.Tensor]) -> list[str]:
    """The block's parameters and the buffers (BatchNorm statistics) of its modules."""
    under = tuple(m + "." for m in block.modules)
    return sorted({*block.params, *(k for k in state if k.startswith(under))})


def test_default_gradcam_layer_follows_the_family_and_the_input_size():
    r18, vit, cnx = (backbone_info(n) for n in ("resnet18", "vit_small_patch16_224", "convnext_tiny"))
    assert (r18.cam_layer(None), r18.cam_layer(224), r18.cam_layer(96), r18.cam_layer(32)) == \
        ("layer4", "layer4", "layer3", "layer1")
    assert cnx.cam_layer(224) == "stages.3" and cnx.cam_layer(96) == "stages.2"
    assert vit.cam_layer(224) == vit.cam_layer(32) == "blocks.11.norm1"
    model = make_classifier(["a", "b"], "backbone=vit_small_patch16_224", "dataset.img_size=64")
    assert resolve_layer(model, None, 64) is model.net.blocks[11].norm1
    cams = compute_cams(model, torch.randn(3, 3, 64, 64), [0, 1, 1])
    assert cams.shape == (3, 64, 64)
    with pytest.raises(ConfigError, match=r"'stage9'.*stages of vit_small_patch16_224: \['blocks.0'"):
        resolve_layer(model, "stage9")


def test_preprocessing_comes_from_the_backbone_unless_the_data_set_says_otherwise(tmp_path):
    def pre(*overrides):
        return run_preprocess(settings_of(compose_train(tmp_path, tmp_path / "data", list(overrides))).dataset)

    vit = pre("backbone=vit_small_patch16_224")
    assert (vit.mean, vit.std, vit.interpolation) == ((0.5,) * 3, (0.5,) * 3, "bicubic")
    assert (vit.img_size, vit.resize) == (96, 1.0)  # the synthetic set draws at 96 px and keeps the border
    folder = ["dataset=folder", "dataset.root=/images"]
    cnx = pre(*folder, "backbone=convnext_tiny", "dataset.img_size=null")
    assert cnx.img_size == 224 and cnx.resize == pytest.approx(1 / 0.95) and cnx.interpolation == "bicubic"
    r18 = pre(*folder, "dataset.img_size=128", "dataset.mean=[0.1,0.2,0.3]", "dataset.interpolation=nearest")
    assert (r18.img_size, r18.mean, r18.interpolation) == (128, (0.1, 0.2, 0.3), "nearest")  # overrides win
    assert r18.std == (0.229, 0.224, 0.225) and r18.resize == pytest.approx(1 / 0.875)  # torchvision's


def test_vit_weights_of_another_input_size_are_resampled(tmp_path):
    torch.manual_seed(3)
    src = build_backbone("vit_small_patch16_224", num_classes=4)  # 224 px: 14 x 14 patches
    path = tmp_path / "vit.pth"
    torch.save(src.state_dict(), path)
    net = build_backbone("vit_small_patch16_224", num_classes=2, weights=str(path), img_size=32)
    assert net.pos_embed.shape == (1, 1 + 2 * 2, 384)
    assert torch.equal(net.blocks[5].attn.qkv.weight, src.blocks[5].attn.qkv.weight)
    assert net(torch.randn(1, 3, 32, 32)).shape == (1, 2)


def test_bad_names_list_the_choices(tmp_path):
    with pytest.raises(ConfigError, match="backbone.name has no value"):
        settings_of(compose_train(tmp_path, tmp_path / "data", ["backbone=timm"]))
    timm_any = settings_of(compose_train(tmp_path, tmp_path / "data", ["backbone=timm", "backbone.name=resnet18.a1_in1k"]))
    assert run_preprocess(timm_any.dataset).interpolation == "bicubic"  # timm's own ResNet-18 recipe
    with pytest.raises(ConfigError) as err:
        backbone_info("efficientnet_b9")
    assert "convnext_tiny" in str(err.value) and "backbone=timm" in str(err.value)
    assert "efficientnet_b0" in str(err.value)  # close timm names
    with pytest.raises(ConfigError, match=r"no pretrained tag 'nope'.*resnet18.tv_in1k"):
        backbone_info("resnet18.nope")


def test_pretrained_weights_from_the_hugging_face_hub_cache_offline(tmp_path):
    """timm's weights from a hub cache laid out as huggingface_hub writes it (HF_HUB_OFFLINE=1), and the error
    that names the file and the place when they are not there."""
    hub = tmp_path / "hf" / "hub"
    repo = hub / "models--timm--efficientnet_b0.ra_in1k"
    (repo / "snapshots" / "local").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("local")
    torch.manual_seed(4)
    net = build_backbone("efficientnet_b0", num_classes=1000)
    state = {k.replace("classifier.1.", "classifier."): v for k, v in net.state_dict().items()}
    save_file(state, str(repo / "snapshots" / "local" / "model.safetensors"))
    script = (
        "import json, torch\n"
        "from medimg.models.backbones import build_backbone, check_weights, WeightsUnavailableError\n"
        "net = build_backbone('efficientnet_b0', num_classes=3, weights='imagenet')\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        "same = torch.equal(net.blocks[3][0].conv_pw.weight, ref)\n"
        "try:\n    check_weights('convnext_tiny', 'imagenet'); error = ''\n"
        "except WeightsUnavailableError as e:\n    error = str(e)\n"
        "print(json.dumps({'same': same, 'error': error}))\n"
    )
    torch.save(net.blocks[3][0].conv_pw.weight.detach().clone(), tmp_path / "ref.pt")
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop("HF_HUB_CACHE", None)
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same"]
    cache = hub / "models--timm--convnext_tiny.in12k_ft_in1k"
    assert "model.safetensors" in out["error"] and str(cache) in out["error"]
    assert "backbone.weights=" in out["error"] and "refs/main" in out["error"]
