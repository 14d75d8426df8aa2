"""Training batches read whole from the decoded cache, for augmentation on the device (data/batch_augment.py).

``CachedBatches`` is a map-style data set whose items are whole batches: the loader's batch sampler hands it
the batch's ``(row, seed)`` pairs (``EpochSampler``'s, so the order and every image's parameters depend only on
the run's seed and the epoch, as on the per-image path), and ``__getitems__`` returns one ``RawBatch``: the
images as stored (uint8, their cached size, one copy out of the memory map per batch when all share a size,
else one per image onto a canvas with edges replicated), the labels, the rows and one parameter row per image.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch

from medimg.data.batch_augment import AugmentSpec
from medimg.data.cache import ImageCache
from medimg.data.sampling import seeded_rng


class RawBatch(NamedTuple):
    """A training batch before augmentation: uint8 N x 3 x H x W images, labels, table rows, N x 11 parameters."""

    images: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    params: torch.Tensor


def passthrough(batch: RawBatch) -> RawBatch:
    """The loader's collate function: ``__getitems__`` already returns the whole batch."""
    return batch


def read_canvas(cache: ImageCache, rows: np.ndarray) -> np.ndarray:
    """N x H x W x 3 uint8 of the cache's ``rows``: one fancy index into the memory map when every image of the
    cache has one shape, else each image at the top left of a canvas that holds them all, its last row and column
    repeated to the canvas's edges (so that resampling at an image's border reads the image, not padding)."""
    if cache.uniform_shape is not None:
        h, w, c = cache.uniform_shape
        n = len(cache.shapes)
        order = np.argsort(rows, kind="stable")  # a memory map reads fastest in file order
        block = cache.memmap()[: n * h * w * c].reshape(n, h, w, c)[rows[order]]
        out = np.empty_like(block)
        out[order] = block
        return out
    shapes = cache.shapes[rows]
    height, width = int(shapes[:, 0].max()), int(shapes[:, 1].max())
    out = np.empty((len(rows), height, width, 3), np.uint8)
    for k, r in enumerate(rows):
        img = cache.array(int(r))
        h, w = img.shape[:2]
        out[k, :h, :w] = img
        out[k, :h, w:] = img[:, -1:]
        out[k, h:, :] = out[k, h - 1:h, :]
    return out


class CachedBatches:
    """Whole training batches of ``cache_rows`` (one cache row per table row) with their labels."""

    def __init__(self, cache: ImageCache, cache_rows: list[int], targets: torch.Tensor, spec: AugmentSpec):
        self.cache, self.spec = cache, spec
        self.cache_rows = np.asarray(cache_rows, dtype=np.int64)
        self.targets = targets

    def __len__(self) -> int:
        return len(self.cache_rows)

    def __getitems__(self, keys: list[tuple[int, int]]) -> RawBatch:
        rows = np.array([k[0] for k in keys], dtype=np.int64)
        cache_rows = self.cache_rows[rows]
        images = torch.from_numpy(read_canvas(self.cache, cache_rows)).permute(0, 3, 1, 2)
        return RawBatch(images, self.targets[torch.from_numpy(rows)], torch.from_numpy(rows),
                        draw_params(self.spec, keys, self.cache.shapes[cache_rows]))


def draw_params(spec: AugmentSpec, keys: list[tuple[int, int]], shapes: np.ndarray) -> torch.Tensor:
    """N x 11 augmentation parameters: image k's drawn from its seed ``keys[k][1]`` for its ``shapes[k]`` (h, w, c)."""
    params = []
    for (_, seed), (h, w, _c) in zip(keys, shapes):
        with seeded_rng(seed):
            params.append(spec.draw(int(h), int(w)))
    return torch.tensor(params, dtype=torch.float64)
