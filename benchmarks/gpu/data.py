"""The throughput data set, made at run time: HAM10000-like 600x450 JPEGs in ``root/{train,val,test}/<class>/``.

A few unique images are generated on every core (``benchmarks/loader_cache.py``'s generator), then hard-linked
under as many names as the measurement needs: each name is its own entry of medimg's scan and decoded-image
cache, so the loader does the full work per image, while generating costs only the unique ones.

    python benchmarks/gpu/data.py --root /tmp/data --unique 1024 --train 24576 --val 256 --test 64
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # HAM10000's seven classes


def _generate_part(folder: str, n: int, seed: int) -> list[str]:
    sys.path.insert(0, str(BENCHMARKS))
    from loader_cache import make_images

    return [str(p) for p in make_images(Path(folder), n, seed=seed)]


def generate_unique(folder: Path, n: int, workers: int) -> list[Path]:
    """``n`` distinct JPEGs under ``folder``, made by ``workers`` processes (each its own seed and subfolder)."""
    parts = [n // workers + (1 if k < n % workers else 0) for k in range(workers)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        jobs = [pool.submit(_generate_part, str(folder / f"part{k}"), m, k) for k, m in enumerate(parts) if m]
        return [Path(p) for job in jobs for p in job.result()]


def _link(src: Path, dst: Path) -> None:
    if dst.exists():
        return
    try:
        os.link(src, dst)
    except OSError:  # another file system, or no hard links: a copy does the same job
        shutil.copyfile(src, dst)


def lay_out(root: Path, unique: list[Path], counts: dict[str, int]) -> dict[str, int]:
    """``root/<split>/<class>/<split>_<i>.jpg`` for ``counts[split]`` images per split, classes round-robin,
    each a hard link to one of ``unique`` (in turn)."""
    k = 0
    for split, n in counts.items():
        for cls in CLASSES:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            _link(unique[k % len(unique)], root / split / CLASSES[i % len(CLASSES)] / f"{split}_{i:06d}.jpg")
            k += 1
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--unique", type=int, default=1024, help="distinct JPEGs generated")
    ap.add_argument("--train", type=int, default=24576, help="training images (names)")
    ap.add_argument("--val", type=int, default=256)
    ap.add_argument("--test", type=int, default=64)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    t0 = time.perf_counter()
    unique = generate_unique(args.root / "unique", args.unique, max(1, min(args.workers, args.unique)))
    t1 = time.perf_counter()
    lay_out(args.root / "images", unique, {"train": args.train, "val": args.val, "test": args.test})
    print(f"{len(unique)} unique JPEGs in {t1 - t0:.1f} s; {args.train}/{args.val}/{args.test} train/val/test "
          f"names under {args.root / 'images'} in {time.perf_counter() - t1:.1f} s")


if __name__ == "__main__":
    main()
