"""dataset.cache: images decoded and shrunk once into a memory-mapped file, identical to decoding again."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from medimg.data import cache as cache_mod
from medimg.data.cache import ImageCache, build_cache, shrink
from medimg.data.readers import read_image
from tests.conftest import dataset_module


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    paths = []
    for i, (w, h) in enumerate([(60, 45), (45, 60), (20, 16), (64, 64), (90, 40)]):
        p = tmp_path / "img" / f"{i}.{'jpg' if i % 2 else 'png'}"
        p.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


def test_cache_holds_the_shrunk_decoded_images(images, tmp_path):
    cache = build_cache(images, tmp_path / "cache", side=32, limits=None)
    for p in images:
        got = cache(p)
        assert got.dtype == torch.uint8 and got.shape[0] == 3
        want = shrink(read_image(p, min_side=32), 32)
        assert (got.permute(1, 2, 0).numpy() == want).all()
    shapes = {p: tuple(cache(p).shape[1:]) for p in images}
    assert shapes[images[0]] == (32, 43) and shapes[images[1]] == (43, 32)  # aspect kept, shorter side 32
    assert shapes[images[2]] == (16, 20)  # smaller images are not enlarged
    files = sorted(f.name for f in (tmp_path / "cache").iterdir() if not f.name.endswith(".lock"))
    assert len(files) == 2 and files[0].endswith(".npz") and files[1].endswith(".u8")  # no temp files left


def test_cache_is_reused_and_rebuilt_when_an_image_changes(images, tmp_path, monkeypatch):
    build_cache(images, tmp_path / "cache", side=32, limits=None)
    calls = []
    original = cache_mod._decode
    monkeypatch.setattr(cache_mod, "_decode", lambda p, s, lim: calls.append(p) or original(p, s, lim))
    build_cache(images, tmp_path / "cache", side=32, limits=None)
    assert calls == [], "an existing cache must not be decoded again"
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(images[0])
    os.utime(images[0], ns=(1, 1))
    cache = build_cache(images, tmp_path / "cache", side=32, limits=None)
    assert len(calls) == len(images) and int(cache(images[0]).max()) == 0
    build_cache(images, tmp_path / "cache", side=48, limits=None)  # another size: another cache
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 3


def test_interrupted_build_leaves_no_cache(images, tmp_path, monkeypatch):
    def boom(p, s, lim):
        raise KeyboardInterrupt

    monkeypatch.setattr(cache_mod, "_decode", boom)
    with pytest.raises(KeyboardInterrupt):
        build_cache(images, tmp_path / "cache", side=32, limits=None)
    assert [p.name for p in (tmp_path / "cache").iterdir() if not p.name.endswith(".lock")] == []


def test_cache_pickles_without_its_memory_map(images, tmp_path):
    cache = build_cache(images, tmp_path / "cache", side=32, limits=None)
    cache(images[0])
    assert cache._mm is not None
    clone = pickle.loads(pickle.dumps(cache))
    assert isinstance(clone, ImageCache) and clone._mm is None
    assert torch.equal(clone(images[3]), cache(images[3]))


def test_datamodule_with_cache_gives_the_same_eval_tensors(tmp_path):
    rng = np.random.default_rng(1)
    for c in ("a", "b"):
        for i in range(10):
            (tmp_path / "set" / c).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "set" / c / f"{i}.png")
    base = {"root": str(tmp_path / "set"), "img_size": 24, "batch_size": 4, "num_workers": 0,
            "split": {"val": 0.2, "test": 0.2, "seed": 0}}
    plain = dataset_module(tmp_path, **base, cache=False)
    plain.setup("fit")
    cached = dataset_module(tmp_path, **base, cache=True, cache_size=1.25)
    cached.setup("fit")
    assert list(cached.work_dir.glob("cache/*.u8")) and cached.work_dir.is_relative_to(tmp_path / "cache")
    assert not (tmp_path / "set" / "cache").exists()  # nothing written inside the user's folder
    for i in range(len(plain.datasets["val"])):
        x0, y0, _ = plain.datasets["val"][i]
        x1, y1, _ = cached.datasets["val"][i]
        assert x1.shape == x0.shape == (3, 24, 24) and y0 == y1
        # cached at 30 px then resized to 24 vs 30 -> 24 directly: the same pixels (no shrinking at 30)
        assert torch.allclose(x0, x1, atol=1e-5)
    batch = next(iter(cached.train_dataloader()))
    assert batch[0].shape == (4, 3, 24, 24)
