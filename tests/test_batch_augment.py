"""Augmentation of whole uint8 batches on the device (data/batch_augment.py, data/cached_batches.py): the same
geometry as torchvision's kernels, every image its own draws, and, for the same seed, the CPU transform's image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from medimg.data.batch_augment import AugmentSpec, augment_batch
from medimg.data.cache import build_cache
from medimg.data.cached_batches import CachedBatches, read_canvas
from medimg.data.sampling import seeded_rng
from medimg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform

PLAIN = dict(augment=True, crop_scale=(0.7, 1.0), hflip=0.0, vflip=0.0, rotation=0.0, color_jitter=0.0,
             mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")


def _spec(size: int = 32, **kw) -> AugmentSpec:
    return AugmentSpec(img_size=size, **{**PLAIN, **kw})


def _row(top, left, h, w, hflip=0, vflip=0, angle=0.0, b=1.0, c=1.0, s=1.0, hue=0.0) -> list[float]:
    return [top, left, h, w, hflip, vflip, angle, b, c, s, hue]


def _smooth(h: int, w: int, seed: int = 0) -> torch.Tensor:
    """A uint8 3 x h x w image of soft blobs (resampling differences stay small on it, as on photographs)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(1, 3, 6, 6, generator=g)
    return (torch.nn.functional.interpolate(low, size=(h, w), mode="bicubic", align_corners=False)
            .clamp(0, 1)[0] * 255).round().to(torch.uint8)


def test_crop_and_flips_are_torchvision_resized_crop():
    img = _smooth(40, 50)
    box = (5, 7, 30, 36)
    want = TF.resized_crop(img.float()[None], *box, [32, 32], InterpolationMode.BILINEAR, antialias=False)[0] / 255
    got = augment_batch(img[None], torch.tensor([_row(*box)]), _spec())[0]
    # inside, the same kernel; on the outer rows and columns torchvision's crop clamps at the crop's edge where
    # ours reads the pixel beyond it, which is there
    torch.testing.assert_close(got[:, 1:-1, 1:-1], want[:, 1:-1, 1:-1], atol=1e-4, rtol=0)
    assert (got - want).abs().max() < 0.01
    both = augment_batch(img[None], torch.tensor([_row(*box, hflip=1, vflip=1)]), _spec())[0]
    torch.testing.assert_close(both, got.flip(-1).flip(-2), atol=1e-5, rtol=0)


def test_rotation_turns_the_way_torchvision_does_with_black_corners():
    img = _smooth(32, 32, seed=1)
    got = augment_batch(img[None], torch.tensor([_row(0, 0, 32, 32, angle=20.0)]), _spec())[0]
    want = TF.rotate(img.float()[None], 20.0, InterpolationMode.BILINEAR)[0] / 255
    other_way = TF.rotate(img.float()[None], -20.0, InterpolationMode.BILINEAR)[0] / 255
    err = (got - want).abs()
    assert err.mean() < 0.01 and (got - other_way).abs().mean() > 5 * err.mean()
    assert float(got[:, 0, 0].abs().max()) == 0.0 and float(got[:, -1, -1].abs().max()) == 0.0  # corners


def test_every_image_draws_its_own_parameters_from_its_seed(tmp_path):
    from PIL import Image

    paths = []
    for k in range(6):
        p = tmp_path / f"{k}.png"
        Image.fromarray(_smooth(40, 48, seed=k).permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    cache = build_cache(paths, tmp_path / "cache", side=40, limits=None, workers=1)
    spec = _spec(hflip=0.5, vflip=0.3, rotation=15, color_jitter=0.2)
    batches = CachedBatches(cache, [cache.row[p] for p in paths], torch.arange(6), spec)
    same_image = [(0, seed) for seed in range(8)]
    raw = batches.__getitems__(same_image)
    assert raw.images.dtype == torch.uint8 and tuple(raw.images.shape) == (8, 3, 40, 48)
    assert len({tuple(r) for r in raw.params.tolist()}) == 8  # one draw per image, not one per batch
    out = augment_batch(raw.images, raw.params, spec)
    assert all((out[a] - out[b]).abs().mean() > 1e-3 for a in range(8) for b in range(a))
    again = batches.__getitems__(same_image)
    assert torch.equal(again.params, raw.params) and torch.equal(augment_batch(again.images, again.params, spec), out)
    mixed = batches.__getitems__([(4, 11), (1, 12), (4, 13)])  # rows in any order, read in one pass
    assert torch.equal(mixed.images[0], mixed.images[2]) and torch.equal(mixed.targets, torch.tensor([4, 1, 4]))
    assert torch.equal(mixed.images[1], cache(paths[1]))


def test_images_of_different_sizes_share_a_canvas_with_their_edges_repeated(tmp_path):
    from PIL import Image

    paths = []
    for k, (h, w) in enumerate([(40, 40), (40, 56), (52, 40)]):
        p = tmp_path / f"{k}.png"
        Image.fromarray(_smooth(h, w, seed=k).permute(1, 2, 0).numpy()).save(p)
        paths.append(str(p))
    cache = build_cache(paths, tmp_path / "cache", side=40, limits=None, workers=1)
    assert cache.uniform_shape is None
    canvas = read_canvas(cache, np.array([0, 1, 2]))
    assert canvas.shape == (3, 52, 56, 3)
    first = cache.array(0)
    assert (canvas[0, :40, :40] == first).all() and (canvas[0, :40, 40:] == first[:, -1:]).all()
    assert (canvas[0, 40:] == canvas[0, 39:40]).all()
    # a crop of the whole of the first image reads only that image: as if it were alone
    spec = _spec()
    rows = torch.tensor([_row(0, 0, 40, 40)] * 3)
    alone = augment_batch(torch.from_numpy(first).permute(2, 0, 1)[None], rows[:1], spec)
    together = augment_batch(torch.from_numpy(canvas).permute(0, 3, 1, 2), rows, spec)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=0)


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_same_seed_same_image_as_the_cpu_transform(interpolation):
    """Same seeds, same draws: each image is the CPU transform's up to resampling (no antialiasing; the rotation
    in the same bilinear pass where the CPU path rotates with nearest neighbours, which alone differs by ~0.08
    in normalised units on these images) and the output statistics match."""
    kw = dict(crop_scale=(0.7, 1.0), hflip=0.5, vflip=0.3, rotation=15.0, color_jitter=0.2)
    cpu = train_transform(32, kw["crop_scale"], IMAGENET_MEAN, IMAGENET_STD, augment=True,
                          interpolation=interpolation, **{k: v for k, v in kw.items() if k != "crop_scale"})
    spec = AugmentSpec(32, True, mean=IMAGENET_MEAN, std=IMAGENET_STD, interpolation=interpolation, **kw)
    images = [_smooth(37, 44, seed=k) for k in range(4)]
    cpu_out, dev_out, params = [], [], []
    for n in range(200):
        img, seed = images[n % 4], 1000 + n
        with seeded_rng(seed):
            cpu_out.append(cpu(img))
        with seeded_rng(seed):
            params.append(spec.draw(37, 44))
    dev_out = augment_batch(torch.stack([images[n % 4] for n in range(200)]), torch.tensor(params), spec)
    cpu_out = torch.stack(cpu_out)
    per_image = (dev_out - cpu_out).abs().mean(dim=(1, 2, 3))
    assert per_image.median() < 0.1 and per_image.max() < 0.2, per_image.sort().values[-5:]
    shuffled = (dev_out - cpu_out.roll(1, 0)).abs().mean(dim=(1, 2, 3))
    assert shuffled.median() > 4 * per_image.median(), (shuffled.median(), per_image.median())  # another image's draws are far off: the draws are the same
    for stat in (lambda t: t.mean(dim=(0, 2, 3)), lambda t: t.std(dim=(0, 2, 3))):
        torch.testing.assert_close(stat(dev_out), stat(cpu_out), atol=0.03, rtol=0)
    p = torch.tensor(params)
    area = p[:, 2] * p[:, 3] / (37 * 44)
    assert 0.68 < area.min() and area.max() <= 1.0 and 0.3 < p[:, 4].mean() < 0.7 and p[:, 6].abs().max() <= 15


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_the_device_gives_the_cpu_result():
    spec = _spec(size=64, hflip=0.5, vflip=0.3, rotation=15, color_jitter=0.2)
    images = torch.stack([_smooth(74, 90, seed=k) for k in range(16)])
    params = []
    for k in range(16):
        with seeded_rng(k):
            params.append(spec.draw(74, 90))
    params = torch.tensor(params)
    cpu = augment_batch(images, params, spec)
    gpu = augment_batch(images.cuda(), params, spec).cpu()
    torch.testing.assert_close(gpu, cpu, atol=2e-3, rtol=0)


@pytest.mark.slow
def test_a_run_trains_on_whole_batches_and_repeats_itself(tiny_cfg, tmp_path, caplog):
    """dataset.batch_augment=true on the CPU: the run says so, trains, and the same seed gives the same run."""
    import logging
    import shutil

    from medimg.train import train

    with caplog.at_level(logging.INFO, logger="medimg"):
        first = train(tiny_cfg("dataset.batch_augment=true", "stage=scratch", "calibration=none"))
    assert "whole uint8 batches from the cache" in caplog.text
    shutil.rmtree(tmp_path / "run")
    second = train(tiny_cfg("dataset.batch_augment=true", "stage=scratch", "calibration=none"))
    assert first["test/loss"] == second["test/loss"] and first["test/auroc"] == second["test/auroc"]
    # the split held on the device, batches indexed there: the same batches, so the same run
    shutil.rmtree(tmp_path / "run")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medimg"):
        resident = train(tiny_cfg("dataset.device_resident=true", "stage=scratch", "calibration=none"))
    assert "training split held on cpu" in caplog.text
    assert resident["test/loss"] == first["test/loss"] and resident["test/auroc"] == first["test/auroc"]


def test_batch_augment_needs_the_cache(tiny_cfg):
    from omegaconf import OmegaConf

    from medimg.config.training import train_settings
    from medimg.errors import ConfigError

    cfg = tiny_cfg("dataset.batch_augment=true", "dataset.cache=false")
    with pytest.raises(ConfigError, match="dataset.batch_augment.*dataset.cache=true"):
        train_settings(OmegaConf.to_container(cfg, resolve=True))
    cfg = tiny_cfg("dataset.device_resident=true", "dataset.batch_augment=false")
    with pytest.raises(ConfigError, match="dataset.device_resident: true holds the decoded cache on the device"):
        train_settings(OmegaConf.to_container(cfg, resolve=True))
    cfg = tiny_cfg("dataset.device_resident_share=1.5")
    with pytest.raises(ConfigError, match="dataset.device_resident_share: must be in"):
        train_settings(OmegaConf.to_container(cfg, resolve=True))
