"""Grad-CAM wrapper: every method, gradients under inference mode, state restored, hooks removed."""

from __future__ import annotations

import gc
import tracemalloc

import numpy as np
import pytest
import torch
from PIL import Image

from medimg.explain.gradcam import (
    METHODS,
    compute_cams,
    denormalise,
    overlay,
    resolve_layer,
    save_explanation,
)
from tests.conftest import make_classifier


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return make_classifier(["a", "b", "c"]).eval()


@pytest.mark.parametrize("method", sorted(METHODS))
def test_every_method_gives_one_map_per_image(model, method):
    x = torch.randn(2, 3, 32, 32)
    cams = compute_cams(model, x, [0, 2], method=method)
    assert cams.shape == (2, 32, 32) and cams.dtype == np.float32
    assert np.isfinite(cams).all() and cams.min() >= 0 and cams.max() <= 1 + 1e-6


def test_maps_differ_by_target_class(model):
    x = torch.randn(1, 3, 64, 64)
    a = compute_cams(model, x, [0])
    b = compute_cams(model, x, [1])
    assert not np.allclose(a, b)


def test_works_under_inference_mode_and_no_grad(model):
    x = torch.randn(2, 3, 64, 64)
    ref = compute_cams(model, x, [1, 1], layer="layer3")
    with torch.inference_mode():
        xi = x.clone()  # an inference tensor, as Lightning's loops hand them out
        a = compute_cams(model, xi, [1, 1], layer="layer3")
    with torch.no_grad():
        b = compute_cams(model, x, [1, 1], layer="layer3")
    np.testing.assert_allclose(a, ref, atol=1e-5)
    np.testing.assert_allclose(b, ref, atol=1e-5)
    assert ref.max() > 0  # gradients did flow


def test_frozen_model_stays_frozen_and_modes_are_restored():
    torch.manual_seed(0)
    m = make_classifier(["a", "b"])
    m.set_phase("head", [], 1e-3, 1)  # frozen backbone, trainable head
    m.train()
    flags = {n: p.requires_grad for n, p in m.named_parameters()}
    modes = {n: mod.training for n, mod in m.named_modules()}
    assert not flags["net.layer1.0.conv1.weight"] and flags["net.fc.1.weight"]
    assert not modes["net.layer4"] and modes["net.fc"]  # frozen blocks in eval mode while training
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    bn = m.net.bn1.running_mean.clone()
    cams = compute_cams(m, torch.randn(2, 3, 64, 64), [0, 1], layer="layer3")
    assert cams.max() > 0  # the frozen backbone still gets a map (gradients through the input)
    assert {n: p.requires_grad for n, p in m.named_parameters()} == flags
    assert {n: mod.training for n, mod in m.named_modules()} == modes
    assert all(p.grad is None for p in m.parameters())  # no gradient leaked into the optimiser's view
    assert all(torch.equal(before[n], p) for n, p in m.named_parameters())
    assert torch.equal(bn, m.net.bn1.running_mean)  # BatchNorm statistics untouched


def test_existing_gradients_are_kept():
    m = make_classifier(["a", "b"])
    m(torch.randn(2, 3, 32, 32)).sum().backward()
    grads = {n: p.grad.clone() for n, p in m.named_parameters()}
    compute_cams(m, torch.randn(1, 3, 32, 32), [0])
    assert all(torch.equal(grads[n], p.grad) for n, p in m.named_parameters())


def test_layer_resolution(model):
    assert resolve_layer(model, None) is model.net.layer4[-1]  # the backbone's default: last block of layer4
    assert resolve_layer(model, "layer4") is model.net.layer4[-1]
    assert resolve_layer(model, "layer3") is model.net.layer3[-1]
    assert resolve_layer(model, "layer4.0") is model.net.layer4[0]
    assert resolve_layer(model, "layer4.-1.conv2") is model.net.layer4[-1].conv2
    with pytest.raises(ValueError, match="layer9.*children"):
        resolve_layer(model, "layer9")


def test_bad_method_and_shape(model):
    with pytest.raises(ValueError, match="gradcam.method"):
        compute_cams(model, torch.randn(1, 3, 32, 32), method="magic")
    with pytest.raises(ValueError, match="batch"):
        compute_cams(model, torch.randn(3, 32, 32))


def test_hooks_removed_and_memory_flat_over_200_calls(model):
    layer = resolve_layer(model, None)
    x = torch.randn(1, 3, 32, 32)
    for _ in range(20):  # warm-up: allocator caches, lazy imports
        compute_cams(model, x, [0])
    gc.collect()
    tracemalloc.start()
    start, _ = tracemalloc.get_traced_memory()
    for i in range(200):
        compute_cams(model, x, [i % 3])
        assert len(layer._forward_hooks) == 0 and len(layer._backward_hooks) == 0
        assert all(len(m._forward_hooks) == 0 for m in model.modules())
    gc.collect()
    end, _ = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert end - start < 2_000_000, f"Python heap grew by {(end - start) / 1e6:.1f} MB over 200 calls"


def test_figure_has_three_panels(tmp_path, model):
    x = torch.randn(1, 3, 32, 32)
    cam = compute_cams(model, x, [0])[0]
    rgb = denormalise(x[0], (0.5, 0.5, 0.5), (0.2, 0.2, 0.2))
    assert rgb.shape == (32, 32, 3) and 0 <= rgb.min() and rgb.max() <= 1
    ov = overlay(rgb, cam)
    assert ov.shape == (32, 32, 3) and ov.dtype == np.uint8
    p = save_explanation(tmp_path / "x.png", rgb, cam, "nevus p=0.900")
    with Image.open(p) as im:
        assert im.width > 2.5 * im.height  # three panels side by side
