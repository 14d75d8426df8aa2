"""Do the fast settings cost accuracy? Whole ``experiment=synthetic`` runs of ``python -m medimg.train``.

- bf16-mixed (+ channels_last, auto) against fp32 (channels_last off), per seed: two runs of one seed differ
  by precision only; other seeds show how far runs differ anyway.
- A head trained on cached features against one trained on augmented images (``stage=head``).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path
from typing import Any

from .build import compose, data_module
from .harness import Bench, checked_process

PRECISIONS = {  # label -> overrides
    "bf16": ["trainer.precision=bf16-mixed"],
    "fp32": ["trainer.precision=32", "model.channels_last=false"],
}
PRECISION_NAMES = {"bf16": "bf16-mixed + channels_last", "fp32": "fp32"}
AUROC_TOLERANCE = 0.01  # the target: |AUROC(bf16) - AUROC(fp32)| at most this


def synthetic_run(b: Bench, run_dir: Path, overrides: list[str]) -> tuple[dict, dict, dict]:
    """``python -m medimg.train experiment=synthetic <overrides>`` in ``run_dir``: (process figures, test
    metrics, step-timer entries)."""
    cmd = [
        sys.executable, "-m", "medimg.train", "experiment=synthetic", *overrides,
        "callbacks.throughput=true", f"hydra.run.dir={run_dir}",
    ]  # fmt: skip
    proc, _ = checked_process(cmd, b.out / f"{run_dir.name}.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return proc, metrics, json.loads((run_dir / "throughput.json").read_text())


def _precision_runs(b: Bench, seeds: list[int], extra: list[str]) -> tuple[list[str], dict]:
    """Table lines of the runs per seed and precision, and their test AUROC by (seed, label)."""
    img_size = compose(["experiment=synthetic", *extra])["dataset"]["img_size"]
    lines = [
        f"| seed | precision | test AUROC | test accuracy | train images/s ({img_size} px) | wall time | others' CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    auroc: dict[tuple[int, str], float] = {}
    for seed in seeds:
        for label, settings in PRECISIONS.items():
            run_dir = b.out / f"accuracy-seed{seed}-{label}"
            proc, metrics, thr = synthetic_run(b, run_dir, [*extra, f"seed={seed}", *settings])
            img_s = statistics.median(v["images_per_s"] for v in thr.values() if v.get("steps_timed"))
            auroc[(seed, label)] = metrics["test/auroc"]
            lines.append(
                f"| {seed} | {PRECISION_NAMES[label]} | {metrics['test/auroc']:.4f} | "
                f"{metrics.get('test/accuracy', float('nan')):.4f} | {img_s:.1f} | {proc['wall_s'] / 60:.1f} min | "
                f"{proc['others']:.0%} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    return lines, auroc


def _difference_lines(auroc: dict[tuple[int, str], float], seeds: list[int]) -> list[str]:
    lines = []
    for seed in seeds:
        diff = auroc[(seed, "bf16")] - auroc[(seed, "fp32")]
        met = "met" if abs(diff) <= AUROC_TOLERANCE else "missed"
        lines.append(
            f"- seed {seed}: AUROC(bf16) - AUROC(fp32) = {diff:+.4f} "
            f"(target |difference| <= {AUROC_TOLERANCE}: {met})"
        )
    if len(seeds) > 1:
        for label in PRECISIONS:
            vals = [auroc[(s, label)] for s in seeds]
            lines.append(f"- {label}: AUROC across seeds {min(vals):.4f} to {max(vals):.4f}")
    return lines


def accuracy(b: Bench, seeds: list[int], extra: list[str] = ()) -> list[str]:
    """The bf16 vs fp32 table per seed, the differences, then the feature-cache check; ``extra``: overrides
    of every run (a smaller data set or fewer epochs)."""
    data_module(compose(["experiment=synthetic", *extra]))  # generate the data set first: no run pays for it
    lines, auroc = _precision_runs(b, seeds, list(extra))
    backbone = b.out / f"accuracy-seed{seeds[0]}-bf16" / "checkpoints" / "best.ckpt"
    return [
        *lines,
        "",
        *_difference_lines(auroc, seeds),
        "",
        *feature_cache_accuracy(b, backbone, list(extra)),
    ]


def feature_cache_accuracy(b: Bench, backbone_ckpt: Path, extra: list[str] = ()) -> list[str]:
    """A head trained on cached features (no augmentation) against one trained on augmented images, on a
    backbone that has learned the data (the bf16 run above stands in for pretrained weights)."""
    lines = [
        "Head phase on a frozen backbone (`stage=head`, weights of the bf16 run above, fresh head):",
        "",
        "| head trained on | test AUROC | test accuracy | phase wall time | others' CPU |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, flag in (("cached features (default)", "true"), ("augmented images", "false")):
        run_dir = b.out / f"accuracy-head-feature_cache-{flag}"
        overrides = [
            *extra,
            "stage=head",
            f"backbone.weights={backbone_ckpt}",
            f"stage.phases.head.feature_cache={flag}",
        ]
        proc, metrics, thr = synthetic_run(b, run_dir, overrides)
        head: dict[str, Any] = thr["head"]
        lines.append(
            f"| {label} | {metrics['test/auroc']:.4f} | {metrics['test/accuracy']:.4f} | "
            f"{head['fit_s']:.0f} s ({head['epochs']} epochs) | {proc['others']:.0%} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return lines
