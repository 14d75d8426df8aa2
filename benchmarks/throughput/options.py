"""The tables after the main one: Lightning's overhead side by side, one option at a time, loading cost."""

from __future__ import annotations

import statistics
import sys
from typing import Any

from .harness import Bench, run_spec

OPTIONS = [  # (stage, label, kind, overrides, spec); grouped by (stage, kind), each group after its reference
    ("full", "medimg, dataset.cache=false", "medimg", ["dataset.cache=false"], {}),
    ("full", "medimg, dataset.num_workers=1", "medimg", ["dataset.num_workers=1"], {}),
    ("full", "medimg, dataset.num_workers=0", "medimg", ["dataset.num_workers=0"], {}),
    ("full", "medimg, trainer.deterministic=false", "medimg", ["trainer.deterministic=false"], {}),
    (
        "full",
        "medimg, trainer.enable_progress_bar=false",
        "medimg",
        ["trainer.enable_progress_bar=false"],
        {},
    ),
    ("full", "medimg, model.channels_last=false", "medimg", ["model.channels_last=false"], {}),
    (
        "full",
        "medimg, trainer.precision=32",
        "medimg",
        ["trainer.precision=32", "model.channels_last=false"],
        {},
    ),
    ("full", "medimg, model.compile=true", "medimg", ["model.compile=true"], {}),
    ("full", "ceiling bf16+CL, weights channels_last too", "ceiling", [], {"weights_channels_last": True}),
    ("full", "ceiling bf16+CL, torch.compile", "ceiling", [], {"compile": True}),
    (
        "head",
        "medimg, feature_cache=false, dataset.num_workers=1",
        "medimg",
        ["stage.phases.head.feature_cache=false", "dataset.num_workers=1"],
        {},
    ),
]
REFERENCES = {  # kind -> (kind, overrides, label) of the reference each option is compared with
    "medimg": ("medimg", [], "reference: medimg (bf16, channels_last, cache, 2 workers)"),
    "ceiling": ("ceiling", [], "reference: ceiling bf16+CL"),
}


def _reference(stage: str, kind: str) -> tuple[str, list[str], str]:
    """(kind, overrides, label) of the reference of the options of ``stage`` and ``kind``."""
    if (stage, kind) == ("head", "medimg"):  # the options change the image path of the head phase
        return "medimg", ["stage.phases.head.feature_cache=false"], "reference: medimg, feature_cache=false"
    return REFERENCES[kind]


def _option_line(model: str, stage: str, label: str, row: dict[str, Any], ref_img_s: float) -> str:
    return (
        f"| {model} | {stage} | {label} | {row['img_s']:.1f} | {row['img_s'] / ref_img_s:.2f}x | "
        f"{row['pss_mib']:.0f} | {row['others']:.0%} |"
    )


def _option_lines(b: Bench, model: str, group: tuple[str, str], ref_img_s: float) -> list[str]:
    """The options of one (stage, kind) group, each against the group's reference."""
    lines = []
    for stage, label, kind, extra, spec in OPTIONS:
        if (stage, kind) != group:
            continue
        try:
            row = b.run(kind, model, stage, label, extra, **spec)
        except RuntimeError as e:
            print(e, file=sys.stderr)
            lines.append(f"| {model} | {stage} | {label} | failed (see the log) | | | |")
            continue
        note = f" (first step {row['first_step_s']:.0f} s)" if spec.get("compile") else ""
        lines.append(_option_line(model, stage, f"{label}{note}", row, ref_img_s))
    return lines


def options_table(b: Bench, model: str) -> list[str]:
    """Each option against a reference measured just before it: medimg as in the main table for the CLI
    options, the bf16+channels_last ceiling for the ceiling options."""
    lines = [
        "| model | stage | configuration | images/s | vs reference | peak PSS MiB (+workers) | others' CPU |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    for stage, kind in dict.fromkeys((s, k) for s, _, k, *_ in OPTIONS):
        ref_kind, ref_extra, ref_label = _reference(stage, kind)
        ref = b.run(ref_kind, model, stage, ref_label, ref_extra)
        lines.append(_option_line(model, stage, ref_label, ref, ref["img_s"]))
        lines += _option_lines(b, model, (stage, kind), ref["img_s"])
    return lines


def overhead_table(b: Bench, model: str, stage: str = "full", rounds: int = 3) -> list[str]:
    """medimg and the plain loop over medimg's data, alternating, ``rounds`` times: one pair is within the
    run-to-run noise of a 2-core machine whose loader workers share the cores, the pooled steps are not."""
    lines = [
        "| round | medimg images/s | plain loop images/s | medimg vs plain (steps/s) |",
        "|---|---:|---:|---:|",
    ]
    pooled: dict[str, list[float]] = {"medimg": [], "plain": []}
    for r in range(1, rounds + 1):
        m = b.run("medimg", model, stage, f"overhead medimg round {r}")
        p = b.run("plain", model, stage, f"overhead plain loop round {r}")
        pooled["medimg"] += m["step_s"]
        pooled["plain"] += p["step_s"]
        lines.append(
            f"| {r} | {m['img_s']:.1f} | {p['img_s']:.1f} | {100 * (m['steps_s'] / p['steps_s'] - 1):+.1f}% |"
        )
    med = {k: statistics.median(v) for k, v in pooled.items()}
    lines.append(
        f"| all {len(pooled['medimg'])} steps each | {b.batch / med['medimg']:.1f} | {b.batch / med['plain']:.1f} | "
        f"**{100 * (med['plain'] / med['medimg'] - 1):+.1f}%** |"
    )
    return lines


def loader_table(b: Bench, model: str, images: int = 64) -> list[str]:
    """What one loader worker spends per training image (one thread, no model running)."""
    spec = {"kind": "loader", "overrides": b.overrides(model, "full"), "images": images}
    _, result = run_spec(spec, b.out / "loader-cost.log")
    lines = ["| loading pipeline (one thread) | ms per image | images/s per core |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {1000 / v:.0f} |" for k, v in result["ms_per_image"].items()]
    return lines
