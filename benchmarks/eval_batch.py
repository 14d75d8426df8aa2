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
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_throughput as tt  # noqa: E402  (the generated images and the config composition)

from medimg.data.datamodule import MedImageDataModule  # noqa: E402
from medimg.models.classifier import ImageClassifier  # noqa: E402


def one_pass(model: ImageClassifier, loader) -> float:
    """Images/s of one pass: load, forward, softmax, like the evaluation loop."""
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for x, _, _ in loader:
            model(x).float().softmax(-1)
            n += len(x)
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", default="resnet18,resnet50")
    ap.add_argument("--sizes", default="32,64,128,256", help="eval batch sizes to compare")
    ap.add_argument("--images", type=int, default=448, help="images in the evaluated split")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    root = tt.DATA / f"ham-like-n{args.images}"
    tt.make_images(root, args.images)
    tt.prepare_data(root, 224)
    sizes = [int(s) for s in args.sizes.split(",")]
    print(f"{tt.machine()}; {args.images} images at 224 px, median of {args.repeats} passes\n")
    print("| backbone | " + " | ".join(f"batch {s}" for s in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for backbone in args.backbones.split(","):
        c = tt._compose(["dataset=folder", f"dataset.root={root}", "dataset.img_size=224"])
        dm = MedImageDataModule(c["dataset"])
        dm.setup("fit")
        model = ImageClassifier(backbone, dm.class_names, weights=None, channels_last=True).eval()
        loaders = {}
        for s in sizes:
            dm.cfg["eval_batch_size"] = s
            loaders[s] = dm.unaugmented_loader("train")  # the largest split, eval transform
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
