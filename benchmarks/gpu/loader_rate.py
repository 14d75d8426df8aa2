"""The data loader alone: medimg's training images (decoded cache + train transform) on every core, no model.

Composes the train config for ``dataset=folder`` at the given root and size and builds medimg's data module
as the training CLI does (``benchmarks/throughput/build.py``): the scan and the decoded cache are made once,
and the training runs then reuse them. Then it times passes of a DataLoader with one worker per core
(``benchmarks/loader_cache.py``'s ``compare``: one warm-up pass, then the median of the timed ones). Prints
one ``RESULT {json}`` line.

    python benchmarks/gpu/loader_rate.py --root /tmp/w/data/images --paths-root /tmp/w --batch-size 256
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def batch_rate(dm, repeats: int, device: str) -> float:
    """Median images/s of ``dm``'s batch loader with its augmentation on ``device`` (one warm-up pass)."""
    import statistics

    from batch_augment import timed_pass

    loader = dm.batch_loader(0)
    timed_pass(loader, True, dm.augment_spec, device)
    return statistics.median(timed_pass(loader, True, dm.augment_spec, device) for _ in range(repeats))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, required=True)
    ap.add_argument("--paths-root", type=Path, required=True,
                    help="paths.root_dir of the training runs (their data cache lives under it)")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes (median reported)")
    args = ap.parse_args()
    sys.path.insert(0, str(REPO / "benchmarks"))
    import torch
    from loader_cache import compare
    from throughput.build import compose, data_module

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    dm = data_module(compose(["dataset=folder", f"dataset.root={args.root}", f"dataset.img_size={args.img_size}",
                              f"paths.root_dir={args.paths_root}"]))
    prepare_s = time.perf_counter() - t0
    train = dm.datasets["train"]
    rates = compare({"train": train}, args.batch_size, args.workers, args.repeats)
    out = {"images": len(train), "workers": args.workers, "batch_size": args.batch_size,
           "repeats": args.repeats, "images_per_s": rates["train"], "prepare_s": round(prepare_s, 2)}
    if dm.batch_augment:  # the training path by default: whole uint8 batches, augmented on the device
        out["device_images_per_s"] = batch_rate(dm, args.repeats, "cuda" if torch.cuda.is_available() else "cpu")
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
