"""Training throughput: ``python -m medimg.train`` against a plain PyTorch loop and against the bare train step.

Same images (HAM10000-like 600x450 JPEGs generated into ``benchmarks/.data/train_throughput/``), same model,
same number of optimisation steps; every configuration runs in its own process, one after the other, and is
timed per step (from the end of one step to the end of the next, data loading included) after a warm-up;
the figure is the batch size over the median step time.

- **baseline**: a plain loop written the way the seed project trained: torchvision ``ImageFolder`` with PIL
  transforms (RandomResizedCrop 224, flips, ColorJitter, RandomRotation, ToTensor, Normalize), a DataLoader
  with 2 workers, fp32, Adam, CrossEntropyLoss; frozen blocks get ``requires_grad=False`` and the whole
  network stays in train mode.
- **medimg**: the real CLI, ``python -m medimg.train dataset=folder ... callbacks.throughput=true``, with the
  step times read from ``<run>/throughput.json`` (the step timer callback).
- **plain loop (medimg data)**: medimg's own data module loaders, model, precision and channels_last in a
  plain loop without Lightning: the difference to **medimg** is Lightning's (and the module's logging) cost.
- **ceiling**: medimg's model and optimiser on tensors already in memory (bf16 autocast + channels_last, and
  fp32 for reference): what the machine computes when nothing else runs.

Peak memory: ``RSS`` is the measured process's ru_maxrss; ``PSS`` is the peak of the summed proportional set
size of the process and its loader workers (shared pages counted once), sampled every 3 s. ``others' CPU``
is the share of the machine that other processes used during a measurement (0% = a quiet machine).
The parts live in ``benchmarks/throughput/`` (data, runners, measurement, tables, accuracy).

    python benchmarks/train_throughput.py                 # the full table (+ options), ~25 min on 2 cores
    python benchmarks/train_throughput.py --quick         # resnet18, head + full, few steps (~2 min): a smoke
                                                          # test; its 2 warm-up steps leave the prefetch queue full
    python benchmarks/train_throughput.py --models resnet18 --stages full --steps 12 --no-options
    python benchmarks/train_throughput.py --accuracy      # bf16 vs fp32 test AUROC on experiment=synthetic
    python benchmarks/train_throughput.py --smoke --no-options --stages full   # does it run? (~30 s; 32 px,
                                                          # batch 4: the figures mean nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from throughput import REPO
from throughput.data import DATA
from throughput.report import report
from throughput.runners import run_one

SMOKE_ACCURACY = [  # --smoke --accuracy: a tiny synthetic set, one epoch per run
    "dataset.num_images=160",
    "dataset.img_size=32",
    "dataset.batch_size=32",
    "trainer.max_epochs=1",
]


def _add_size_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--quick", action="store_true", help="resnet18, head+full, 3 timed steps, no options (~3 min)"
    )
    ap.add_argument(
        "--smoke",
        action="store_true",
        help="tiny sizes to check that a mode runs: 32 px, batch 4, 2 timed steps, resnet18, head+full, no "
        "repeated measurements; with --accuracy, 1-epoch runs on 160 synthetic images (the figures mean nothing)",
    )
    ap.add_argument("--models", default="resnet18,resnet50")
    ap.add_argument("--stages", default="head,finetune,full")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per configuration (default 8)")
    ap.add_argument(
        "--warmup",
        type=int,
        default=5,
        help="untimed steps before them (>= the 4 batches 2 workers prefetch, so that a loader-bound "
        "configuration is timed at the loader's pace, not from a full queue)",
    )
    ap.add_argument("--ceiling-steps", type=int, default=None, help="timed steps of the ceiling (default 5)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument(
        "--head-epochs",
        type=int,
        default=10,
        help="epochs of the feature-cached head phase (its figure: all images trained over the fit's wall time)",
    )
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument(
        "--data-dir", type=Path, default=DATA, help="where the generated images and the run logs go"
    )


def _add_mode_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument(
        "--no-options",
        dest="options",
        action="store_false",
        help="skip the overhead, options and loading-cost tables (cache, workers, determinism, precision, compile)",
    )
    ap.add_argument(
        "--accuracy", action="store_true", help="only the bf16 vs fp32 accuracy check (~2 x 5+ min)"
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        help="before starting, wait up to this many seconds for other processes to use < 5%% of the CPU",
    )
    ap.add_argument(
        "--max-others",
        type=float,
        default=0.10,
        help="measure a configuration again when other processes took more than this share of the CPU",
    )
    ap.add_argument("--retries", type=int, default=2, help="at most this many repeated measurements each")
    ap.add_argument("--seeds", default="42", help="--accuracy: seeds to run, e.g. 42,43 (two runs each)")
    ap.add_argument("--one", help=argparse.SUPPRESS)


def _unless_given(args: argparse.Namespace, ap: argparse.ArgumentParser, **values) -> None:
    """Set each of ``values`` where the command line left the flag at its default."""
    for key, value in values.items():
        if getattr(args, key) == ap.get_default(key):
            setattr(args, key, value)


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line, with the ``--quick`` and ``--smoke`` presets and the derived sizes applied."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_size_flags(ap)
    _add_mode_flags(ap)
    args = ap.parse_args(argv)
    args.data_dir = args.data_dir.resolve()  # before the working directory changes to the repository
    args.accuracy_overrides = SMOKE_ACCURACY if args.smoke else []
    if args.quick:
        args.models, args.options = "resnet18", False
        _unless_given(args, ap, stages="head,full", steps=3, ceiling_steps=3)
        args.warmup = min(args.warmup, 2)
    if args.smoke:
        _unless_given(args, ap, models="resnet18", stages="head,full", steps=2, ceiling_steps=1, batch_size=4)
        _unless_given(args, ap, img_size=32, head_epochs=1, retries=0)
        args.warmup = min(args.warmup, 1)
    args.steps = args.steps or 8
    args.ceiling_steps = args.ceiling_steps or 5
    args.images = -(-(args.warmup + args.steps) * args.batch_size // 64) * 64  # every step a fresh batch
    return args


def main() -> None:
    args = parse_args(sys.argv[1:])
    os.chdir(REPO)  # relative data paths (paths.root_dir) resolve as in the subprocesses
    if args.one:
        run_one(json.loads(args.one))
        return
    print("\n".join(report(args, sys.argv[1:])))


if __name__ == "__main__":
    main()
