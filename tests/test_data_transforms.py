"""The training transform's fast pieces against torchvision's reference ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from medimg.data.color_jitter import JitterNormalize, colour_matrix
from medimg.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RandomRotationU8,
    eval_transform,
    train_transform,
)


def _image(seed: int = 0, h: int = 40, w: int = 52) -> torch.Tensor:
    """Smooth colourful uint8 image away from 0 and 255 (so single ops do not clip)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(3, 5, 6, generator=g) * 0.5 + 0.25
    return (torch.nn.functional.interpolate(base[None], size=(h, w), mode="bilinear")[0] * 255).round().byte()


def _apply_matrix(img: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,jhw->ihw", m, img.float() / 255)


def test_brightness_and_saturation_match_torchvision():
    img = _image()
    for b in (0.8, 1.15):
        ref = TF.adjust_brightness(img.float() / 255, b)
        assert torch.allclose(_apply_matrix(img, colour_matrix(b, 1.0, 0.0)), ref, atol=1e-5)
    for s in (0.8, 1.2):
        ref = TF.adjust_saturation(img.float() / 255, s)
        assert torch.allclose(_apply_matrix(img, colour_matrix(1.0, s, 0.0)), ref, atol=1e-5)


def test_hue_rotation_keeps_grey_and_follows_torchvisions_hue_shift():
    torch.manual_seed(0)
    x = torch.rand(3, 20, 20) * 0.6 + 0.2
    grey = torch.full((3, 4, 4), 0.4)
    for h in (-0.1, -0.02, 0.02, 0.05):
        m = colour_matrix(1.0, 1.0, h)
        assert torch.allclose(torch.einsum("ij,jhw->ihw", m, grey), grey, atol=1e-6)  # grey stays grey
        out, ref = torch.einsum("ij,jhw->ihw", m, x), TF.adjust_hue(x, h)
        ours, theirs = (out - x).abs().mean().item(), (ref - x).abs().mean().item()
        assert 0.5 < ours / theirs < 2.0  # a change of the same size ...
        wrong_way = torch.einsum("ij,jhw->ihw", colour_matrix(1.0, 1.0, -h), x)
        assert (out - ref).abs().mean() < 0.5 * (wrong_way - ref).abs().mean()  # ... in the same direction
    assert torch.allclose(colour_matrix(1.0, 1.0, 0.0), torch.eye(3), atol=1e-6)


def test_contrast_matches_torchvision_when_nothing_clips():
    img = _image(2)
    torch.manual_seed(0)
    jn = JitterNormalize(IMAGENET_MEAN, IMAGENET_STD, strength=0.2, hue=0.0)
    b, c, s, h = 1.0, 1.1, 1.0, 0.0
    jn._factors = lambda: (b, c, s, h)
    out = jn(img) * jn.std + jn.mean
    ref = TF.adjust_contrast(img.float() / 255, c)
    assert torch.allclose(out, ref, atol=1e-5)


def test_strength_zero_is_plain_normalisation_and_factors_stay_in_range():
    img = _image(3)
    plain = JitterNormalize(IMAGENET_MEAN, IMAGENET_STD, strength=0.0)(img)
    ref = TF.normalize(img.float() / 255, list(IMAGENET_MEAN), list(IMAGENET_STD))
    assert torch.allclose(plain, ref, atol=1e-6)
    jn = JitterNormalize(IMAGENET_MEAN, IMAGENET_STD, strength=0.2)
    f = torch.tensor([jn._factors() for _ in range(2000)])
    assert f[:, :3].min() >= 0.8 and f[:, :3].max() <= 1.2 and f[:, 3].abs().max() <= 0.02
    assert f[:, :3].min() < 0.81 and f[:, :3].max() > 1.19  # the whole range is drawn
    out = jn(torch.full((3, 8, 8), 255, dtype=torch.uint8)) * jn.std + jn.mean
    assert out.max() <= 1 + 1e-6  # clamped before normalising


@pytest.mark.parametrize("bad", [-0.1, 1.0])
def test_bad_strength_is_refused(bad):
    with pytest.raises(ValueError, match="colour jitter strength"):
        JitterNormalize(IMAGENET_MEAN, IMAGENET_STD, strength=bad)
    with pytest.raises(TypeError, match="uint8"):
        JitterNormalize(IMAGENET_MEAN, IMAGENET_STD)(torch.zeros(3, 4, 4))


def test_rotation_equals_pil_rotate_with_the_same_angle():
    img = _image(4)
    torch.manual_seed(7)
    out = RandomRotationU8(15)(img)
    torch.manual_seed(7)
    angle = float(torch.empty(()).uniform_(-15, 15))
    ref = np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).rotate(angle))
    assert out.dtype == torch.uint8 and out.shape == img.shape
    assert torch.equal(out, torch.from_numpy(ref).permute(2, 0, 1))
    wide = RandomRotationU8(15)
    wide.degrees = 0.0  # uniform_(-0, 0): no rotation at all
    assert torch.equal(wide(img), img)
    seed = next(s for s in range(100) if abs(torch.manual_seed(s) and torch.empty(()).uniform_(-15, 15)) > 10)
    torch.manual_seed(seed)
    assert RandomRotationU8(15)(img)[:, 0, 0].sum() == 0  # corners filled with black, as torchvision's


def test_train_transform_takes_pil_and_cached_tensors_and_is_seeded():
    arr = np.random.default_rng(0).integers(0, 255, (60, 80, 3), dtype=np.uint8)
    aug = dict(crop_scale=(0.7, 1.0), mean=IMAGENET_MEAN, std=IMAGENET_STD, augment=True, hflip=0.5, vflip=0.3,
               rotation=15, color_jitter=0.2)
    tf = train_transform(32, **aug)
    for inp in (Image.fromarray(arr), torch.from_numpy(arr).permute(2, 0, 1)):  # reader, cache view
        torch.manual_seed(3)
        a = tf(inp)
        torch.manual_seed(3)
        assert torch.equal(a, tf(inp))
        assert a.shape == (3, 32, 32) and a.dtype == torch.float32
    assert not any("ColorJitter" in type(t).__name__ for t in tf.transforms)
    off = train_transform(32, **{**aug, "hflip": 0, "vflip": 0, "rotation": 0, "color_jitter": 0,
                                 "crop_scale": (1.0, 1.0)})
    assert [type(t).__name__ for t in off.transforms] == ["ToImage", "RandomResizedCrop", "JitterNormalize"]
    ev = eval_transform(32, 1.0, IMAGENET_MEAN, IMAGENET_STD)(Image.fromarray(arr))
    assert ev.shape == (3, 32, 32)
