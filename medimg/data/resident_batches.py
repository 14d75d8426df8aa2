"""Training batches indexed from a split held on the model's device (``dataset.device_resident``).

A small training split's cached uint8 images (a canvas per image, as ``cached_batches.read_canvas`` lays them
out) are copied to the device once; every epoch then indexes its batches there: the ``(row, seed)`` order of
``EpochSampler`` (shuffled or balanced, seeded by the run's seed and the epoch, each rank its share under DDP),
one parameter row per image drawn from its seed, no loader workers and no host-to-device copy of images. The
batches are ``RawBatch``es, augmented after the transfer as the loader's are, and equal to them image for
image: the run computes the same thing, only faster.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from medimg.data.batch_augment import AugmentSpec
from medimg.data.cache import ImageCache
from medimg.data.cached_batches import RawBatch, draw_params, read_canvas
from medimg.data.sampling import EpochSampler


class ResidentSplit:
    """The cache rows ``cache_rows`` (one per training image) with their labels, on ``device``."""

    def __init__(self, cache: ImageCache, cache_rows: list[int], targets: torch.Tensor, device: torch.device):
        rows = np.asarray(cache_rows, dtype=np.int64)
        self.shapes = cache.shapes[rows]
        self.images = torch.from_numpy(read_canvas(cache, rows)).permute(0, 3, 1, 2).to(device)
        self.targets = targets.to(device)
        self.device = torch.device(device)

    @staticmethod
    def nbytes(cache: ImageCache, cache_rows: list[int]) -> int:
        """Bytes the split takes on the device (the largest image's canvas for every image)."""
        shapes = cache.shapes[np.asarray(cache_rows, dtype=np.int64)]
        return int(len(shapes) * shapes[:, 0].max() * shapes[:, 1].max() * 3) if len(shapes) else 0


class ResidentBatches:
    """One epoch of ``RawBatch``es of ``batch_size`` from ``split`` in ``sampler``'s order. ``sampler`` is exposed
    so that the trainer sets its epoch, as it does a loader's."""

    def __init__(self, split: ResidentSplit, sampler: EpochSampler, batch_size: int, spec: AugmentSpec):
        self.split, self.sampler, self.batch_size, self.spec = split, sampler, int(batch_size), spec

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)

    def __iter__(self):
        keys = list(self.sampler)
        split = self.split
        for start in range(0, len(keys), self.batch_size):
            chunk = keys[start:start + self.batch_size]
            rows = torch.tensor([k[0] for k in chunk], dtype=torch.int64)
            on_device = rows.to(split.device, non_blocking=True)
            params = draw_params(self.spec, chunk, split.shapes[rows.numpy()])
            yield RawBatch(split.images[on_device], split.targets[on_device], on_device,
                           params.to(split.device, non_blocking=True))
