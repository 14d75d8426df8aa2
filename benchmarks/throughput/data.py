"""The benchmark images: HAM10000-like 600x450 JPEGs, generated once, and medimg's scan and cache of them.

``make_images`` lays out ``root/{train,val,test}/<class>/*.jpg`` (the folder layout ``dataset=folder`` reads);
``draw_lesion``/``save_lesion_jpeg`` make one image, for benchmarks with other layouts (``loader_cache.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import REPO

DATA = REPO / "benchmarks" / ".data" / "train_throughput"  # default home of the images and the run logs
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # HAM10000's seven classes
EVAL_IMAGES = 14  # per val/test split: 2 per class (the benchmark runs neither)
WIDTH, HEIGHT = 600, 450  # HAM10000's image size


@dataclass(frozen=True)
class Lesion:
    """What one image shows: skin tone and its left-right gradient, an elliptic lesion, texture noise."""

    tone: np.ndarray  # RGB of the skin
    tilt: float  # brightness gradient across the image
    cx: float
    cy: float
    r: float  # lesion centre and radius (px)
    shade: float  # lesion colour as a fraction of the skin tone
    noise_seed: int  # seeds the texture, so that skipping a file keeps the other images unchanged


def draw_lesion(rng: np.random.Generator, shade: float) -> Lesion:
    """A random lesion of the given ``shade``."""
    tone = rng.uniform(150, 220, 3)
    tilt, cx, cy, r = rng.uniform(-1, 1), rng.uniform(200, 400), rng.uniform(150, 300), rng.uniform(40, 120)
    return Lesion(tone, tilt, cx, cy, r, shade, int(rng.integers(2**31)))


def save_lesion_jpeg(path: Path, lesion: Lesion) -> None:
    """``lesion`` as a 600x450 JPEG (quality 90) with fine texture: ~90 KB, like HAM10000's files."""
    from PIL import Image, ImageDraw, ImageFilter

    from medimg.files import atomic_write

    xx = np.arange(WIDTH, dtype=np.float64)[None, :].repeat(HEIGHT, 0)
    base = lesion.tone - 0.05 * (xx[..., None] - WIDTH / 2) * lesion.tilt
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    cx, cy, r = lesion.cx, lesion.cy, lesion.r
    fill = tuple(int(v) for v in lesion.tone * lesion.shade)
    ImageDraw.Draw(img).ellipse([cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r], fill=fill)
    smooth = np.asarray(img.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)
    textured = smooth + np.random.default_rng(lesion.noise_seed).normal(0, 8, (HEIGHT, WIDTH, 1))
    with atomic_write(path) as tmp:  # an interrupted run leaves no half-written image behind
        Image.fromarray(np.clip(textured, 0, 255).astype(np.uint8)).save(tmp, format="JPEG", quality=90)


def make_images(root: Path, n_train: int, seed: int = 0) -> Path:
    """``root/{train,val,test}/<class>/*.jpg``, classes round-robin, each class a little darker than the
    last. Existing files are kept (the random draws are made anyway, so the other images stay the same)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", EVAL_IMAGES), ("test", EVAL_IMAGES)):
        for i in range(n):
            path = root / split / CLASSES[i % len(CLASSES)] / f"{split}_{i:05d}.jpg"
            lesion = draw_lesion(rng, shade=0.35 + 0.05 * (i % 7))
            if not path.exists():
                save_lesion_jpeg(path, lesion)
    return root


def folder_overrides(root: Path, img_size: int) -> list[str]:
    """The config of training on the images under ``root`` (medimg's files about them in ``root``'s folder)."""
    return [
        "dataset=folder",
        f"dataset.root={root}",
        f"dataset.img_size={img_size}",
        f"paths.cache_dir={root.parent / 'cache'}",
    ]


def prepare_data(root: Path, img_size: int) -> None:
    """Scan the images and build the decoded-image cache once, so that no measured run pays for either."""
    from .build import compose, data_module

    data_module(compose([*folder_overrides(root, img_size), "dataset.cache=true"]))
