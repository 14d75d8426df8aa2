"""Training input paths side by side: per-image augmentation in the loader workers against whole uint8 batches
from the cache augmented after the transfer (``dataset.batch_augment``, data/batch_augment.py), and the training
split held on the device with its batches indexed there (``dataset.device_resident``, data/resident_batches.py).

Part 1 (loader): HAM10000-like 600x450 JPEGs, cached once; the timed passes alternate between the paths and
count augmented, normalised float batches ready for the network (for the batch path: read, transfer to
``--device``, ``augment_batch``). Part 2 (``--fit``): the same full fine-tune through the command line with
each of the three input paths, alternating, ``callbacks.throughput=true``; ``images_per_s_fit`` (the fit) and
``images_per_s`` (the training steps) of ``throughput.json``.

    python benchmarks/batch_augment.py --images 512 --img-size 224 --workers 2 --repeats 5 --fit 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from loader_cache import make_images
from throughput.build import transforms
from torch.utils.data import BatchSampler, DataLoader

from medimg.data.batch_augment import AugmentSpec, augment_batch
from medimg.data.cache import build_cache
from medimg.data.cached_batches import CachedBatches, passthrough
from medimg.data.image_dataset import ImageDataset
from medimg.data.sampling import EpochSampler
from medimg.data.table import make_table
from medimg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

REPO = Path(__file__).resolve().parents[1]


def loaders(table, cache, img_size: int, batch: int, workers: int) -> tuple[dict[str, tuple[DataLoader, bool]], AugmentSpec]:
    """({label: (loader, whether its batches still need ``augment_batch``)}, the batch path's settings)."""
    train_tf, _ = transforms(_compose(img_size))
    per_image = ImageDataset(table, ["a", "b"], train_tf, reader=cache)
    spec = AugmentSpec(img_size, True, (0.7, 1.0), 0.5, 0.3, 15.0, 0.2, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    batches = CachedBatches(cache, [cache.row[p] for p in table["path"]], per_image.targets, spec)
    out = {}
    for w in sorted({workers, 0}, reverse=True):
        out[f"per image, {w} workers"] = (DataLoader(
            per_image, batch_size=batch, sampler=EpochSampler(len(per_image), 0, 0), num_workers=w,
            persistent_workers=w > 0), False)
        out[f"whole batches, {w} workers"] = (DataLoader(
            batches, batch_sampler=BatchSampler(EpochSampler(len(per_image), 0, 0), batch, False),
            collate_fn=passthrough, num_workers=w, persistent_workers=w > 0), True)
    return out, spec


def _compose(img_size: int):
    from throughput.build import compose

    return compose([f"dataset.img_size={img_size}"])


def kornia_pipeline(spec: AugmentSpec, device: str):
    """The same steps with kornia.augmentation (per-sample draws), or None when kornia is not installed."""
    try:
        import kornia.augmentation as K
    except ImportError:
        return None
    s = spec.color_jitter
    return torch.nn.Sequential(
        K.RandomResizedCrop((spec.img_size, spec.img_size), scale=spec.crop_scale), K.RandomHorizontalFlip(spec.hflip),
        K.RandomVerticalFlip(spec.vflip), K.RandomRotation(spec.rotation, p=1.0),
        K.ColorJitter(s, s, s, s / 10, p=1.0), K.Normalize(torch.tensor(spec.mean), torch.tensor(spec.std)),
    ).to(device)


def timed_pass(loader, augment, spec: AugmentSpec, device: str) -> float:
    """Images/s of one pass over ``loader``: transferred to ``device`` and, for whole batches (``augment`` true, or
    a module such as kornia's), augmented there."""
    t0, n = time.perf_counter(), 0
    for batch in loader:
        if callable(augment):
            x = augment(batch.images.to(device).float().div_(255))
        elif augment:
            x = augment_batch(batch.images.to(device, non_blocking=True), batch.params, spec)
        else:
            x = batch[0].to(device)
        n += len(x)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return n / (time.perf_counter() - t0)


def loader_rates(args, root: Path) -> dict[str, float]:
    paths = make_images(root / "images", args.images)
    table = make_table(paths, ["a" if i % 2 else "b" for i in range(len(paths))])
    cache = build_cache(table["path"].tolist(), root / "cache", int(round(args.img_size * 1.15)), None,
                        workers=args.workers)
    named, spec = loaders(table, cache, args.img_size, args.batch_size, args.workers)
    kornia = kornia_pipeline(spec, args.device)
    if kornia is not None:  # the library alternative, on the same whole batches (images of one size here)
        named[f"whole batches, kornia.augmentation, {args.workers} workers"] = (
            named[f"whole batches, {args.workers} workers"][0], kornia)
    for loader, aug in named.values():  # warm workers and the page cache
        timed_pass(loader, aug, spec, args.device)
    rates: dict[str, list[float]] = {k: [] for k in named}
    for _ in range(args.repeats):
        for k, (loader, aug) in named.items():
            rates[k].append(timed_pass(loader, aug, spec, args.device))
    return {k: statistics.median(v) for k, v in rates.items()}


FIT_SETTINGS = {  # name -> the dataset overrides of that input path
    "per image (batch_augment=false)": ["dataset.batch_augment=false", "dataset.device_resident=false"],
    "whole batches (batch_augment=true)": ["dataset.batch_augment=true", "dataset.device_resident=false"],
    "split held on the device (device_resident=true)": ["dataset.device_resident=true"],
}


def fit_rates(args, root: Path) -> dict[str, dict[str, float]]:
    """Median ``images_per_s_fit`` and training-step ``images_per_s`` of the same CLI run with each input path
    (the runs alternate)."""
    rates: dict[str, list[tuple[float, float]]] = {k: [] for k in FIT_SETTINGS}
    for r in range(args.fit):
        for i, (name, overrides) in enumerate(FIT_SETTINGS.items()):
            out = root / f"fit-{i}-{r}"
            cmd = [sys.executable, "-m", "medimg.train", "experiment=synthetic", f"paths.data_dir={root / 'data'}",
                   f"paths.output_dir={out}", f"dataset.num_images={args.fit_images}",
                   f"dataset.img_size={args.fit_size}", f"trainer.max_epochs={args.fit_epochs}", "test=false",
                   "callbacks.throughput=true", "trainer.enable_progress_bar=false", "logger=csv",
                   "evaluation.gallery_per_class=0", *overrides]
            subprocess.run(cmd, cwd=REPO, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            phases = json.loads((out / "throughput.json").read_text()).values()
            rates[name].append((statistics.mean(p["images_per_s_fit"] for p in phases),
                                statistics.mean(p["images_per_s"] for p in phases)))
    return {k: {"fit": statistics.median(f for f, _ in v), "step": statistics.median(s for _, s in v)}
            for k, v in rates.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=512, help="generated 600x450 JPEGs for the loader part")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5, help="timed passes per path (median reported)")
    ap.add_argument("--device", default="cpu", help="where batches are augmented (cpu, cuda)")
    ap.add_argument("--fit", type=int, default=0, help="CLI fits per setting (0 = skip part 2)")
    ap.add_argument("--fit-images", type=int, default=2000)
    ap.add_argument("--fit-size", type=int, default=32)
    ap.add_argument("--fit-epochs", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    root = Path(tempfile.mkdtemp(prefix="medimg-batch-augment-"))
    print(f"{os.cpu_count()} CPUs; loader: {args.images} JPEGs 600x450 at {args.img_size} px, batch "
          f"{args.batch_size}, augmented on {args.device}, median of {args.repeats} passes")
    print("| path | img/s |\n|---|---:|")
    for k, v in loader_rates(args, root).items():
        print(f"| {k} | {v:.0f} |")
    if args.fit:
        print(f"fit: synthetic, {args.fit_images} images at {args.fit_size} px, {args.fit_epochs} epochs, "
              f"median of {args.fit} runs each")
        print("| path | images_per_s_fit | images_per_s (step) | fit / step |\n|---|---:|---:|---:|")
        for k, v in fit_rates(args, root).items():
            print(f"| {k} | {v['fit']:.1f} | {v['step']:.1f} | {v['fit'] / v['step']:.2f} |")


if __name__ == "__main__":
    main()
