"""Data loader throughput with and without the decoded-image cache (``dataset.cache``).

Generates HAM10000-like 600x450 JPEGs, then times full passes of a DataLoader over them at the network input
size, reading either the JPEG files (decode every time) or the memory-mapped cache (decoded once).

    python benchmarks/loader_cache.py --images 512 --img-size 224 --workers 2 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from throughput.build import compose, transforms
from throughput.data import draw_lesion, save_lesion_jpeg
from torch.utils.data import DataLoader

from medimg.data.cache import build_cache
from medimg.data.image_dataset import ImageDataset
from medimg.data.readers import read_image
from medimg.data.table import make_table


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 600x450 JPEGs in ``folder``: skin-like background, one lesion, fine texture (quality 90)."""
    rng = np.random.default_rng(seed)
    paths = [folder / f"img_{i:05d}.jpg" for i in range(n)]
    for p in paths:
        lesion = draw_lesion(rng, shade=0.45)
        if not p.exists():
            save_lesion_jpeg(p, lesion)
    return paths


def _pass(loader) -> float:
    t0 = time.perf_counter()
    n = sum(len(batch[0]) for batch in loader)
    return n / (time.perf_counter() - t0)


def compare(datasets: dict[str, ImageDataset], batch_size: int, workers: int, repeats: int) -> dict[str, float]:
    """Median images/s per dataset; the timed passes alternate between them so that a machine whose load
    changes during the run affects both alike. One untimed pass each first warms workers and page cache."""
    loaders = {k: DataLoader(d, batch_size=batch_size, shuffle=True, num_workers=workers,
                             persistent_workers=workers > 0) for k, d in datasets.items()}
    for loader in loaders.values():
        _pass(loader)
    rates: dict[str, list[float]] = {k: [] for k in loaders}
    for _ in range(repeats):
        for k, loader in loaders.items():
            rates[k].append(_pass(loader))
    return {k: statistics.median(v) for k, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512, help="number of generated 600x450 JPEGs")
    ap.add_argument("--img-size", type=int, default=224, help="network input side")
    ap.add_argument("--cache-size", type=float, default=1.15, help="cached shorter side / img-size")
    ap.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per setting (median reported)")
    ap.add_argument("--dir", type=Path, default=None, help="where to write the images (default: a temp dir)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    root = args.dir or Path(tempfile.mkdtemp(prefix="medimg-loader-bench-"))
    paths = make_images(root / "images", args.images)
    table = make_table(paths, ["a" if i % 2 else "b" for i in range(len(paths))])
    side = int(round(args.img_size * args.cache_size))
    t0 = time.perf_counter()
    cache = build_cache(table["path"].tolist(), root / "cache", side, None, workers=args.workers)
    build_s = time.perf_counter() - t0
    cache_mb = cache.data_file.stat().st_size / 2**20
    jpeg_mb = sum(p.stat().st_size for p in paths) / 2**20

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"{os.cpu_count()} CPUs, load average {load:.1f} at the start")
    print(f"{args.images} JPEGs 600x450 ({jpeg_mb:.0f} MiB), img_size {args.img_size}, workers {args.workers}, "
          f"batch {args.batch_size}, torch threads/worker 1, median of {args.repeats} passes")
    print(f"cache: shorter side {side} px, {cache_mb:.0f} MiB, built in {build_s:.1f} s "
          f"({args.images / build_s:.0f} images/s)")
    print("| transform | JPEG decode (img/s) | cache (img/s) | speed-up |")
    print("|---|---|---|---|")
    train_tf, eval_tf = transforms(compose([f"dataset.img_size={args.img_size}"]))
    for name, tf in (("train (augment)", train_tf), ("eval", eval_tf)):
        rates = compare({"jpeg": ImageDataset(table, ["a", "b"], tf, reader=read_image),
                         "cache": ImageDataset(table, ["a", "b"], tf, reader=cache)},
                        args.batch_size, args.workers, args.repeats)
        plain, cached = rates["jpeg"], rates["cache"]
        print(f"| {name} | {plain:.0f} | {cached:.0f} | {cached / plain:.2f}x |")


if __name__ == "__main__":
    main()
