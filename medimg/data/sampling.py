"""Training order and augmentation that depend only on (seed, epoch): reproducible across kills and resumes.

``EpochSampler`` shuffles with a generator seeded by the run's seed and the epoch (Lightning calls
``set_epoch`` before each epoch, with the restored epoch after a resume), gives every position of the epoch
its own seed for the image's augmentation, and under DDP hands each rank its share (padded like
``DistributedSampler``). Nothing here reads or advances the process-wide random state, so loader workers
(persistent or not, any number) and a resumed run see exactly the same images in the same order.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from collections.abc import Iterator

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts (stable across processes and Python versions, unlike ``hash``)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Torch's CPU random state set from ``seed`` inside the block, and put back afterwards."""
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(state)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def balanced_weights(targets: torch.Tensor) -> torch.Tensor:
    """Draw probabilities that make every class equally likely (1 / the class's count for each row)."""
    counts = torch.bincount(targets)
    return 1.0 / counts[targets].double()


class EpochSampler(Sampler):
    """Yields ``(row, seed)`` pairs: a shuffled (or ordered, or class-balanced) pass over ``n`` rows for the
    current epoch."""

    def __init__(self, n: int, seed: int, epoch: int, shuffle: bool = True, weights: torch.Tensor | None = None):
        self.n, self.seed, self.shuffle = int(n), int(seed), shuffle
        self.weights = weights  # per-row draw probabilities (balanced sampling, with replacement), or None
        self.rank, self.world = _rank_and_world()
        self.epoch = int(epoch)  # the fit's current epoch: a resumed fit may iterate before calling set_epoch

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", self.epoch))
        if self.weights is not None:
            order = torch.multinomial(self.weights, self.n, replacement=True, generator=g)
        else:
            order = torch.randperm(self.n, generator=g) if self.shuffle else torch.arange(self.n)
        total = len(self) * self.world
        if total > self.n:  # pad so that every rank gets the same number of items
            order = torch.cat([order, order[: total - self.n]])
        seeds = torch.randint(0, 2**62, (total,), generator=g)
        mine = slice(self.rank, total, self.world)
        return iter(zip(order[mine].tolist(), seeds[mine].tolist()))
