"""Speed of every configured backbone on this machine, at 224 px, as medimg builds and trains it.

For each backbone (``conf/backbone/*.yaml``; random weights: speed does not depend on them):

- parameters;
- head phase images/s: the feature-cached head phase costs one pass of each image through the frozen backbone
  (``medimg.training.features.extract_features``, eval mode, the run's precision); the head then trains on
  the cached vectors in milliseconds;
- full fine-tune images/s: forward, loss, backward and optimiser step with every block trainable
  (``set_phase('full', 'all')``, the run's precision and channels_last);
- predict images/s: eager fp32 inference, as ``python -m medimg.predict`` runs by default.

All three run on 224 px tensors already in memory (the model's cost; the loaders are measured by
``train_throughput.py``), each the median over ``--repeats`` timed batches after one warm-up batch.

    python benchmarks/backbones.py                                   # every configured backbone
    python benchmarks/backbones.py --backbones resnet18 vit_small_patch16_224 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from machine import describe_machine
from throughput.build import compose, settings
from throughput.runners import medimg_step

from medimg.files import write_json
from medimg.training.features import extract_features
from medimg.training.model import classifier_of

CONF = Path(__file__).resolve().parents[1] / "conf" / "backbone"
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # HAM10000's seven classes


def build(backbone: str, size: int):
    """(model, runtime) as a training run on a folder of images builds them, random weights."""
    c = compose(["dataset=folder", "dataset.root=/unused", f"dataset.img_size={size}", f"backbone={backbone}",
                 "backbone.weights=null", "seed=0"])
    s, rt = settings(c)
    torch.manual_seed(0)
    return classifier_of(s, rt, CLASSES, None, None), rt


def _rate(fn, batch: int, repeats: int) -> float:
    """Images/s: ``batch`` over the median time of ``fn()`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)


def measure(backbone: str, size: int, batch: int, train_batch: int, repeats: int) -> dict:
    model, rt = build(backbone, size)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, len(CLASSES), (batch,), generator=g)
    bf16 = rt.precision.startswith("bf16")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)
    row = {"backbone": backbone, "timm": model.arch.model_name, "precision": rt.precision,
           "parameters": sum(p.numel() for p in model.parameters())}
    loader = [(x, y, torch.arange(batch))]
    row["head_img_s"] = _rate(lambda: extract_features(model, loader, autocast), batch, repeats)

    model.eval()
    with torch.inference_mode():
        row["predict_img_s"] = _rate(lambda: model(x), batch, repeats)

    model.set_phase("full", "all", 1e-4, 1)
    model.train()
    step = medimg_step(model, rt.precision)
    xt, yt = x[:train_batch], y[:train_batch]
    row["finetune_img_s"] = _rate(lambda: step(xt, yt), train_batch, repeats)
    return row


def table(rows: list[dict]) -> list[str]:
    lines = ["| backbone (timm) | parameters | head phase img/s (features) | full fine-tune img/s | "
             "predict img/s (fp32) | training precision |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['backbone']} ({r['timm']}) | {r['parameters'] / 1e6:.1f} M | {r['head_img_s']:.1f} | "
                     f"{r['finetune_img_s']:.1f} | {r['predict_img_s']:.1f} | {r['precision']} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+",
                    default=sorted(p.stem for p in CONF.glob("*.yaml") if p.stem != "timm"))
    ap.add_argument("--size", type=int, default=224, help="input side in pixels")
    ap.add_argument("--batch", type=int, default=32, help="images per feature-extraction / predict batch")
    ap.add_argument("--train-batch", type=int, default=16, help="images per fine-tune step")
    ap.add_argument("--repeats", type=int, default=3, help="timed batches per measurement (median)")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = ap.parse_args()
    rows = []
    for b in args.backbones:
        rows.append(measure(b, args.size, args.batch, args.train_batch, args.repeats))
        print(f"{b}: done", file=sys.stderr, flush=True)
    print(f"Command: `python benchmarks/backbones.py {' '.join(sys.argv[1:])}`")
    print(describe_machine())
    print(f"{args.size} px, batch {args.batch} (features, predict) / {args.train_batch} (fine-tune), "
          f"median of {args.repeats} timed batches after one warm-up, random weights, tensors in memory")
    print("\n".join(table(rows)))
    if args.json:
        write_json(args.json, {"settings": vars(args) | {"json": str(args.json)}, "rows": rows})


if __name__ == "__main__":
    main()
