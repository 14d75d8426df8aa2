"""Evaluation speed against ``dataset.eval_batch_size``: medimg's real eval loader and model, bf16 autocast +
channels_last (the CPU default), images/s over whole passes of a split.

Every batch size is measured ``--repeats`` times, the sizes interleaved pass by pass so that other load on a
shared machine hits them alike; the figure is the median pass. Images: the HAM10000-like JPEGs that
``benchmarks/train_throughput.py`` generates (its data folder is reused; it is generated first when missing).

    python benchmarks/eval_batch.py                                  # resnet18 and resnet50, 32/64/128/256
    python benchmarks/eval_batch.py --backbones resnet18 --sizes 32,128 --repeats 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from machine import describe_machine
from throughput.build import classifier, compose, data_module
from throughput.data import DATA, folder_overrides, make_images, prepare_data

IMG_SIZE = 224


def one_pass(model, loader) -> float:
    """Images/s of one pass: load, forward, softmax, like the evaluation loop."""
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, _, _ in loader:
            model(x).float().softmax(-1)
            n += len(x)
    return n / (time.perf_counter() - t0)


def eval_loaders(root, backbone: str, sizes: list[int]):
    """medimg's model for ``backbone`` (eval mode, channels_last) and its eval loader over the training
    images (the largest split, eval transform) at each batch size."""
    loaders, model = {}, None
    for s in sizes:
        c = compose([*folder_overrides(root, IMG_SIZE), f"dataset.eval_batch_size={s}", f"backbone={backbone}",
                     "backbone.weights=null", "model.channels_last=true"])
        dm = data_module(c)
        model = model or classifier(c, dm).eval()
        loaders[s] = dm.once_loader(dm.unaugmented_dataset("train"))  # as feature extraction reads
    return model, loaders


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="resnet18,resnet50")
    ap.add_argument("--sizes", default="32,64,128,256", help="eval batch sizes to compare")
    ap.add_argument("--images", type=int, default=448, help="images in the evaluated split")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = DATA / f"ham-like-n{args.images}"
    make_images(root, args.images)
    prepare_data(root, IMG_SIZE)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{describe_machine()}; {args.images} images at {IMG_SIZE} px, median of {args.repeats} passes\n")
    print("| backbone | " + " | ".join(f"batch {s}" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for backbone in args.backbones.split(","):
        model, loaders = eval_loaders(root, backbone, sizes)
        rates: dict[int, list[float]] = {s: [] for s in sizes}
        for s in sizes:  # warm-up pass each
            one_pass(model, loaders[s])
        for _ in range(args.repeats):
            for s in sizes:
                rates[s].append(one_pass(model, loaders[s]))
        med = {s: statistics.median(v) for s, v in rates.items()}
        print(
            f"| {backbone} | "
            + " | ".join(f"{med[s]:.1f} ({med[s] / med[sizes[0]]:.2f}x)" for s in sizes)
            + " |"
        )


if __name__ == "__main__":
    main()
