"""The whole report that ``train_throughput.py`` prints: what ran where, the tables, the machine's load."""

from __future__ import annotations

import argparse
import datetime as dt
import os
import sys
from pathlib import Path

from machine import describe_machine

from . import REPO
from .accuracy import accuracy
from .data import make_images, prepare_data
from .harness import Bench
from .measure import wait_quiet
from .options import loader_table, options_table, overhead_table
from .runners import CEILING_WARMUP
from .tables import main_table


def _shown(path: Path) -> Path:
    """``path`` relative to the repository when it is inside it."""
    return path.relative_to(REPO) if path.is_relative_to(REPO) else path


def throughput_sections(b: Bench, args: argparse.Namespace) -> list[str]:
    """The data line, the main table and (unless ``--no-options``) the overhead, options and loading tables."""
    models, stages = args.models.split(","), args.stages.split(",")
    make_images(b.root, args.images)
    prepare_data(b.root, args.img_size)
    lines = [
        f"{args.images} training JPEGs 600x450 -> {args.img_size} px, batch {b.batch}, "
        f"{args.warmup} warm-up + {args.steps} timed steps per configuration ({CEILING_WARMUP} + "
        f"{args.ceiling_steps} for the ceiling, which has no loader), median step time.",
        "",
        *main_table(b, models, stages),
    ]
    if not args.options:
        return lines
    return [
        *lines,
        "",
        f"Lightning overhead side by side ({models[0]}, full; medimg and the plain loop alternating):",
        "",
        *overhead_table(b, models[0]),
        "",
        "Options (one change each against medimg as above):",
        "",
        *options_table(b, models[0]),
        "",
        "Loading cost per training image:",
        "",
        *loader_table(b, models[0]),
    ]


def report(args: argparse.Namespace, argv: list[str]) -> list[str]:
    """Measure what ``args`` asks for and return the report's lines (progress goes to stderr)."""
    b = Bench(args)
    wait_quiet(args.wait_quiet)
    started, load0 = dt.datetime.now(), os.getloadavg()
    print(f"medimg training throughput, {started:%Y-%m-%d %H:%M}", file=sys.stderr)
    lines = [
        f"Command: `python benchmarks/train_throughput.py {' '.join(argv)}`".replace("  ", " "),
        f"Date: {started:%Y-%m-%d %H:%M}; machine: {describe_machine()}",
    ]
    if args.accuracy:
        lines += ["", *accuracy(b, [int(v) for v in args.seeds.split(",")], args.accuracy_overrides)]
    else:
        lines += throughput_sections(b, args)
    load1 = os.getloadavg()
    minutes = (dt.datetime.now() - started).seconds / 60
    return [
        *lines,
        "",
        f"Load average (1/5/15 min): {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} at the start, "
        f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} at the end; {minutes:.1f} min; logs in {_shown(b.out)}",
    ]
