"""Decoded-image cache: every image decoded and shrunk once into one memory-mapped uint8 file.

``dataset.cache=true`` makes the data module read images from here instead of decoding JPEGs every epoch.
Each image keeps its aspect ratio, its shorter side brought down to ``side`` (``cache_size * img_size``;
smaller images are stored as they are), as RGB uint8 rows in ``<key>.u8``; ``<key>.npz`` holds the index
(path, byte offset, height, width). The key hashes the paths, their sizes and modification times and ``side``,
so a changed data folder gets a new cache. Both files are written under temporary names and renamed, the
index last: an index means a complete cache.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medimg.data.readers import ImageLimits, read_image
from medimg.files import atomic_write, file_lock

log = logging.getLogger(__name__)
CACHE_VERSION = 1


def cache_key(paths: Sequence[str], side: int) -> str:
    """Hash of the images (path, size, mtime) and the stored size."""
    h = hashlib.sha1(f"v{CACHE_VERSION}:{side}\n".encode())
    for p in sorted(paths):
        st = os.stat(p)
        h.update(f"{p}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def shrink(img: Image.Image, side: int) -> np.ndarray:
    """Resize so the shorter side is ``side`` (only ever down), keeping the aspect ratio; HxWx3 uint8."""
    w, h = img.size
    if min(w, h) > side:
        scale = side / min(w, h)
        img = img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def _decode(path: str, side: int, limits: ImageLimits | None) -> np.ndarray:
    return shrink(read_image(path, min_side=side, limits=limits), side)


class ImageCache:
    """Reader over a built cache: ``cache(path)`` -> CxHxW uint8 tensor. Opens its memory map lazily, so it
    pickles small into data loader workers and each worker maps the file itself."""

    def __init__(self, data_file: Path, index_file: Path):
        self.data_file, self.index_file = Path(data_file), Path(index_file)
        with np.load(self.index_file, allow_pickle=False) as z:
            self.offsets, self.shapes = z["offsets"], z["shapes"]
            self.row = {str(p): i for i, p in enumerate(z["paths"])}
        expected = int(self.offsets[-1] + np.prod(self.shapes[-1])) if len(self.offsets) else 0
        if self.data_file.stat().st_size != expected:
            raise OSError(f"cache {self.data_file} holds {self.data_file.stat().st_size} bytes, its index "
                          f"expects {expected}")
        self._mm: np.memmap | None = None
        same = len(self.shapes) > 0 and bool((self.shapes == self.shapes[0]).all())
        self.uniform_shape = tuple(int(x) for x in self.shapes[0]) if same else None  # (h, w, c) shared by all

    def __len__(self) -> int:
        return len(self.row)

    def memmap(self) -> np.memmap:
        """The cache file, mapped read-only (once per process)."""
        if self._mm is None:
            self._mm = np.memmap(self.data_file, dtype=np.uint8, mode="r")
        return self._mm

    def array(self, i: int) -> np.ndarray:
        """Image ``i`` (its row in the index) as an H x W x C uint8 copy: the map stays read-only."""
        h, w, c = (int(x) for x in self.shapes[i])
        start = int(self.offsets[i])
        return np.array(self.memmap()[start:start + h * w * c]).reshape(h, w, c)

    def __call__(self, path: str) -> torch.Tensor:
        return torch.from_numpy(self.array(self.row[str(path)])).permute(2, 0, 1)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_mm"] = None
        return state


def build_cache(paths: Sequence[str], cache_dir: str | Path, side: int, limits: ImageLimits | None,
                workers: int = 2, chunk: int = 256) -> ImageCache:
    """Open the cache of ``paths`` at ``side``, building it first when it is not there (one process at a time:
    a second run waits for the first and then opens what it built)."""
    paths = [str(p) for p in paths]
    cache_dir = Path(cache_dir)
    key = cache_key(paths, side)
    data_file, index_file = cache_dir / f"{key}.u8", cache_dir / f"{key}.npz"
    with file_lock(cache_dir / key):
        if index_file.is_file() and data_file.is_file():
            try:
                return ImageCache(data_file, index_file)
            except (OSError, ValueError, KeyError) as e:
                log.warning("rebuilding the image cache %s (%s)", data_file, e)
        _write_cache(paths, data_file, index_file, side, limits, workers, chunk)
    return ImageCache(data_file, index_file)


def _write_cache(paths: list[str], data_file: Path, index_file: Path, side: int, limits: ImageLimits | None,
                 workers: int, chunk: int) -> None:
    log.info("caching %d decoded images (shorter side %d px) in %s", len(paths), side, data_file)
    offsets = np.zeros(len(paths), np.int64)
    shapes = np.zeros((len(paths), 3), np.int32)
    pos, t0 = 0, time.perf_counter()
    with atomic_write(data_file) as tmp, open(tmp, "wb") as f, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(paths), chunk):  # chunks bound the memory held by finished decodes
            part = paths[start:start + chunk]
            for i, arr in enumerate(pool.map(_decode, part, [side] * len(part), [limits] * len(part)), start):
                offsets[i], shapes[i] = pos, arr.shape
                f.write(arr.tobytes())
                pos += arr.nbytes
    with atomic_write(index_file) as tmp, open(tmp, "wb") as f:  # last: an index means a complete cache
        np.savez(f, paths=np.array(paths, dtype=str), offsets=offsets, shapes=shapes)
    log.info("image cache written: %.0f MiB in %.0f s (dataset.cache=false turns it off)", pos / 2**20,
             time.perf_counter() - t0)
