"""The built-in synthetic "lesion" data set: deterministic, with a ground-truth mask per image.

Every image is a patch of skin-like background with one lesion. The class lives only in the lesion:

- ``nevus``      (62%): regular oval, even brown
- ``melanoma``   (18%): irregular border, two-tone dark brown with blue-grey patches
- ``keratosis``  (12%): oval with a striped ("cerebriform") texture, tan
- ``vascular``    (8%): small lobulated lesion, red to purple

Class-independent distractors (hairs, a corner ruler mark, uneven lighting, a skin tone drawn from the
same distribution for every class) make the task impossible to solve from a global colour or a corner
marker, and the class parameters overlap so that it is learnable but not trivial.

``site_shift`` (0 by default) draws the same kind of images as a second hospital's camera would: a warmer colour
cast, flatter contrast and darker mid-tones, growing with the shift (``site_look``). A model trained on the plain
set and evaluated on a shifted one (``dataset=synthetic_site_b``) shows what external validation is for.

Layout written under ``root``::

    images/<class>/<class>_00000.png    RGB uint8
    masks/<class>/<class>_00000.png     L uint8, 255 where the lesion (the class evidence) is
    manifest.json                       the generator's parameters; written last, marks the set complete
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from medimg.errors import DataError, DataExistsError
from medimg.files import temp_folder

CLASSES = ("nevus", "melanoma", "keratosis", "vascular")
PROPORTIONS = (0.62, 0.18, 0.12, 0.08)
GENERATOR_VERSION = 1


def class_counts(num_images: int) -> list[int]:
    """How many images of each class ``num_images`` holds (every class gets at least 2)."""
    counts = [max(2, int(round(p * num_images))) for p in PROPORTIONS]
    counts[0] += num_images - sum(counts)
    if counts[0] < 2:
        raise DataError(f"num_images={num_images} is too small for {len(CLASSES)} classes; use at least 16")
    return counts


def _lesion_radius(rng: np.random.Generator, cls: str, n_angles: int = 360) -> np.ndarray:
    """Radius (relative to the base radius) as a function of angle: the lesion's outline."""
    theta = np.linspace(0, 2 * np.pi, n_angles, endpoint=False)
    r = np.ones_like(theta)
    if cls == "melanoma":
        amp = rng.uniform(0.10, 0.32)
        harmonics = rng.integers(3, 9, size=3)
    elif cls == "vascular":
        amp = rng.uniform(0.08, 0.18)
        harmonics = np.array([rng.integers(3, 6)])
    else:
        amp = rng.uniform(0.0, 0.10)
        harmonics = rng.integers(2, 5, size=2)
    for h in harmonics:
        r += amp / len(harmonics) * np.sin(h * theta + rng.uniform(0, 2 * np.pi)) * rng.uniform(0.6, 1.4)
    return r


def _skin(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """One tone distribution for all classes, uneven lighting, fine noise: HxWx3 float."""
    skin = np.array([rng.uniform(0.70, 0.92), rng.uniform(0.50, 0.72), rng.uniform(0.42, 0.62)], np.float32)
    light = 1.0 + 0.12 * np.sin(2 * np.pi * (rng.uniform(0.3, 1.0) * xx + rng.uniform()) + rng.uniform(0, 6))
    light *= 1.0 + 0.08 * np.cos(2 * np.pi * (rng.uniform(0.3, 1.0) * yy) + rng.uniform(0, 6))
    img = skin[None, None, :] * light[..., None]
    return img + rng.normal(0, 0.025, size=img.shape).astype(np.float32)


def _geometry(rng: np.random.Generator, cls: str, xx: np.ndarray, yy: np.ndarray) -> dict[str, np.ndarray]:
    """Position, size, elongation, rotation and outline: lesion coordinates (u, v), distance, mask, soft edge."""
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    base = rng.uniform(0.10, 0.15) if cls == "vascular" else rng.uniform(0.13, 0.22)
    aspect = rng.uniform(0.7, 1.0)
    rot = rng.uniform(0, np.pi)
    dx, dy = xx - cx, yy - cy
    u = dx * np.cos(rot) + dy * np.sin(rot)
    v = (-dx * np.sin(rot) + dy * np.cos(rot)) / aspect
    dist = np.sqrt(u**2 + v**2)
    angle = np.mod(np.arctan2(v, u), 2 * np.pi)
    outline = _lesion_radius(rng, cls)
    r_at = base * outline[(angle / (2 * np.pi) * len(outline)).astype(int) % len(outline)]
    edge = np.clip((r_at - dist) / (0.02 + 0.02 * rng.uniform()), 0, 1)  # soft border
    return {"u": u, "v": v, "dist": dist, "rot": rot, "mask": dist <= r_at, "edge": edge}


def _lesion(rng: np.random.Generator, cls: str, g: dict[str, np.ndarray]) -> np.ndarray:
    """Colour and texture, per class, with overlapping ranges: HxWx3."""
    u, v, dist, rot = g["u"], g["v"], g["dist"], g["rot"]
    if cls == "nevus":
        col = np.array([rng.uniform(0.35, 0.55), rng.uniform(0.22, 0.36), rng.uniform(0.14, 0.26)])
        return col[None, None, :] * np.ones_like(dist)[..., None]
    if cls == "melanoma":
        dark = np.array([rng.uniform(0.18, 0.36), rng.uniform(0.10, 0.22), rng.uniform(0.08, 0.18)])
        blue = np.array([rng.uniform(0.30, 0.45), rng.uniform(0.32, 0.45), rng.uniform(0.40, 0.55)])
        blob = np.sin(2 * np.pi * (rng.uniform(2, 5) * u + rng.uniform())) * np.cos(
            2 * np.pi * (rng.uniform(2, 5) * v + rng.uniform())
        )
        w = np.clip(0.5 + blob * rng.uniform(0.8, 1.6), 0, 1)[..., None] * rng.uniform(0.4, 0.9)
        return dark[None, None, :] * (1 - w) + blue[None, None, :] * w
    if cls == "keratosis":
        col = np.array([rng.uniform(0.45, 0.62), rng.uniform(0.32, 0.45), rng.uniform(0.20, 0.32)])
        freq = rng.uniform(12, 22)
        stripes = 0.5 + 0.5 * np.sin(2 * np.pi * freq * (u * np.cos(rot) + v * np.sin(rot)) + rng.uniform(0, 6))
        return col[None, None, :] * (1.0 - rng.uniform(0.25, 0.45) * stripes)[..., None]
    if cls == "vascular":
        col = np.array([rng.uniform(0.50, 0.72), rng.uniform(0.12, 0.25), rng.uniform(0.18, 0.40)])
        lobes = 0.85 + 0.15 * np.cos(2 * np.pi * rng.uniform(8, 14) * dist)
        return col[None, None, :] * lobes[..., None]
    raise DataError(f"unknown synthetic class {cls!r}; expected one of {CLASSES}")


def _distractors(rng: np.random.Generator, img: np.ndarray, size: int) -> None:
    """Hairs (thin dark curves) and a ruler mark in a corner, drawn in place: no class information."""
    for _ in range(rng.integers(0, 4)):
        x0, y0, x1, y1 = rng.uniform(0, 1, size=4)
        bend = rng.uniform(-0.15, 0.15)
        t = np.linspace(0, 1, 4 * size)
        px = ((x0 + (x1 - x0) * t + bend * np.sin(np.pi * t)) * size).astype(int)
        py = ((y0 + (y1 - y0) * t) * size).astype(int)
        ok = (px >= 0) & (px < size) & (py >= 0) & (py < size)
        img[py[ok], px[ok]] *= rng.uniform(0.3, 0.6)
    if rng.uniform() < 0.35:
        s = max(2, size // 12)
        corner_y = rng.choice([0, size - s])
        corner_x = rng.choice([0, size - s])
        img[corner_y : corner_y + s, corner_x : corner_x + s] = rng.uniform(0.05, 0.95, size=3)


def site_look(img: np.ndarray, shift: float) -> np.ndarray:
    """``img`` (HxWx3 float in [0, 1]) as another site's acquisition shows it: red up and blue down by
    ``0.3 * shift``, contrast about the image mean cut by ``0.4 * shift``, gamma ``1 + 0.6 * shift``."""
    if shift == 0:
        return img
    out = img * np.array([1 + 0.3 * shift, 1.0, 1 - 0.3 * shift], np.float32)
    mean = out.mean(axis=(0, 1), keepdims=True)
    out = mean + (out - mean) * (1 - 0.4 * shift)
    return np.clip(out, 0, 1) ** (1 + 0.6 * shift)


def render(rng: np.random.Generator, cls: str, size: int, site_shift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Draw one image of class ``cls`` (as a site ``site_shift`` away shows it): returns (RGB uint8 HxWx3,
    mask bool HxW)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    img = _skin(rng, xx, yy)
    geometry = _geometry(rng, cls, xx, yy)
    lesion = _lesion(rng, cls, geometry)
    lesion = lesion + rng.normal(0, 0.03, size=lesion.shape)
    alpha = geometry["edge"][..., None] * rng.uniform(0.75, 1.0)
    img = img * (1 - alpha) + lesion.astype(np.float32) * alpha
    _distractors(rng, img, size)
    out = (site_look(np.clip(img, 0, 1), site_shift) * 255).round().astype(np.uint8)
    return out, geometry["mask"]


def generate(root: str | Path, num_images: int = 3000, img_size: int = 96, seed: int = 0,
             site_shift: float = 0.0) -> Path:
    """Write the data set under ``root`` unless an identical one is already there; returns ``root``.

    The set is built in a temporary sibling folder and moved into place whole, so an interrupted run
    never leaves a half-written set that a later run could mistake for complete.
    """
    root = Path(root)
    params = {"version": GENERATOR_VERSION, "num_images": num_images, "img_size": img_size, "seed": seed,
              "classes": list(CLASSES), **({"site_shift": float(site_shift)} if site_shift else {})}
    if not 0 <= site_shift <= 1:
        raise DataError(f"dataset.site_shift must be in [0, 1] (0: the plain set), got {site_shift!r}")
    manifest = root / "manifest.json"
    if manifest.exists():
        if json.loads(manifest.read_text()) == params:
            return root
        raise DataExistsError(
            f"{root} holds a synthetic data set generated with other parameters "
            f"({manifest.read_text().strip()}); delete the folder or point dataset.root elsewhere"
        )
    if root.exists() and any(root.iterdir()):
        raise DataExistsError(f"{root} exists and is not a synthetic data set; choose another dataset.root")

    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(".synthetic-", root.parent)
    try:
        rng = np.random.default_rng(seed)
        for cls, count in zip(CLASSES, class_counts(num_images)):
            (tmp / "images" / cls).mkdir(parents=True)
            (tmp / "masks" / cls).mkdir(parents=True)
            for i in range(count):
                img, mask = render(rng, cls, img_size, site_shift)
                name = f"{cls}_{i:05d}.png"
                Image.fromarray(img).save(tmp / "images" / cls / name)
                Image.fromarray(mask.astype(np.uint8) * 255).save(tmp / "masks" / cls / name)
        (tmp / "manifest.json").write_text(json.dumps(params))
        try:
            if root.exists():
                root.rmdir()
            tmp.rename(root)
        except OSError:
            # another process (a DDP rank started by torchrun) finished the same set first
            if not (manifest.exists() and json.loads(manifest.read_text()) == params):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return root


def mask_path(image_path: str | Path) -> Path:
    """The mask that belongs to a synthetic image: images/<class>/x.png -> masks/<class>/x.png."""
    p = Path(image_path)
    return p.parents[2] / "masks" / p.parent.name / p.name
