"""What one loader worker spends per training image, pipeline by pipeline (one thread, no model running).

Also the seed project's input pipeline (PIL decode and torchvision's PIL transforms), which the baseline
trains with.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

from .build import compose, data_module


def seed_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """The seed project's training transform on PIL images: crop, flips, ColorJitter, rotation, normalise."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.7, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(0.3),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
            T.RandomRotation(15),
            T.ToTensor(),
            T.Normalize(list(mean), list(std)),
        ]
    )


def _v2_tensor_transform(size: int, mean: Sequence[float], std: Sequence[float]):
    """medimg's augmentation with torchvision's own ColorJitter and RandomRotation on uint8 tensors (what
    medimg's fused colour matrix and PIL rotation replace)."""
    import torch
    from torchvision.transforms import v2

    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.3),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.02),
            v2.RandomRotation(15),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )


def loader_pipelines(pre, medimg_transform) -> dict[str, tuple[str, Any]]:
    """Per-image loading pipelines: label -> (reader, transform); ``pre`` is the run's Preprocess (the
    backbone's preprocessing filled in), ``medimg_transform`` the data module's own training transform."""
    size, mean, std = int(pre.img_size), pre.mean, pre.std
    v2_label = "variant: cache + torchvision v2 ColorJitter and RandomRotation on uint8 tensors"
    return {
        "baseline: PIL decode + PIL transforms": ("pil", seed_transform(size, mean, std)),
        "medimg: JPEG decode + train transform": ("jpeg", medimg_transform),
        "medimg: cache + train transform (the default)": ("cache", medimg_transform),
        v2_label: ("cache", _v2_tensor_transform(size, mean, std)),
    }


def _ms_per_image(read: Callable, transform: Callable, paths: list) -> float:
    """Milliseconds per image to read and transform ``paths``: the median of 3 passes after one image."""
    transform(read(paths[0]))
    passes = []
    for _ in range(3):
        t0 = time.perf_counter()
        for p in paths:
            transform(read(p))
        passes.append(1000 * (time.perf_counter() - t0) / len(paths))
    return statistics.median(passes)


def run_loader(spec: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per image of each pipeline on one thread, over the first ``spec['images']`` images."""
    import torch
    from PIL import Image

    from medimg.data.readers import read_image

    torch.set_num_threads(1)
    torch.manual_seed(0)
    c = compose(spec["overrides"])
    dm = data_module(c)
    train = dm.datasets["train"]
    paths = train.paths[: spec["images"]]
    readers = {"pil": lambda p: Image.open(p).convert("RGB"), "jpeg": read_image, "cache": train.reader}
    return {
        label: _ms_per_image(readers[reader], transform, paths)
        for label, (reader, transform) in loader_pipelines(dm.preprocess, train.transform).items()
    }
