"""The main table (every way of training, per model and stage) and the targets checked against it."""

from __future__ import annotations

import statistics
from typing import Any

from .harness import Bench

FP32 = ["trainer.precision=32", "model.channels_last=false"]
BF16_CHANNELS_LAST = ["trainer.precision=bf16-mixed", "model.channels_last=true"]
ROW_ORDER = ("baseline", "medimg", "images", "plain", "ceiling", "ceiling32")


def measure_stage(b: Bench, model: str, stage: str) -> dict[str, dict[str, Any]]:
    """Every way of training ``model`` in ``stage``. ``images``: medimg training on images (for the head
    stage, with the feature cache off; elsewhere the ``medimg`` row itself)."""
    r = {"baseline": b.run("baseline", model, stage, "baseline")}
    if stage == "head":  # the default: features computed once, the head trains on them
        label = f"medimg ({b.args.head_epochs} epochs incl. feature extraction)"
        r["medimg"] = b.run("medimg", model, stage, label, fit_epochs=b.args.head_epochs)
        r["images"] = b.run(
            "medimg", model, stage, "medimg, feature_cache=false", ["stage.phases.head.feature_cache=false"]
        )
    else:
        r["medimg"] = b.run("medimg", model, stage, "medimg")
        r["images"] = r["medimg"]
    r["plain"] = b.run("plain", model, stage, "plain loop (medimg data)")
    r["ceiling"] = b.run("ceiling", model, stage, "ceiling bf16+CL", BF16_CHANNELS_LAST)
    r["ceiling32"] = b.run("ceiling", model, stage, "ceiling fp32", FP32)
    return r


def _stage_lines(model: str, stage: str, r: dict[str, dict[str, Any]]) -> list[str]:
    lines = []
    for key in ROW_ORDER:
        row = r[key]
        if key == "images" and row is r["medimg"]:
            continue
        lines.append(
            f"| {model} | {stage} | {row['label']} | {row['img_s']:.1f} | "
            f"{row['img_s'] / r['baseline']['img_s']:.2f}x | {100 * row['img_s'] / r['ceiling']['img_s']:.0f}% | "
            f"{row['rss_mib']:.0f} | {row['pss_mib']:.0f} | {row['others']:.0%} |"
        )
    return lines


def main_table(b: Bench, models: list[str], stages: list[str]) -> list[str]:
    """The table of every way of training, then the targets."""
    lines = [
        "| model | stage | configuration | images/s | x baseline | % of ceiling | peak RSS MiB | "
        "peak PSS MiB (+workers) | others' CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    measured: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for model in models:
        for stage in stages:
            measured[(model, stage)] = measure_stage(b, model, stage)
            lines += _stage_lines(model, stage, measured[(model, stage)])
    lines += ["", "Targets (ratios from this run):", ""]
    return lines + targets_table(measured, models, stages, b.args.head_epochs)


def _check(model: str, check: str, value: str, target: str, met: bool) -> str:
    return f"| {model} | {check} | {value} | {target} | {'yes' if met else 'no'} |"


def _full_targets(model: str, full: dict[str, dict[str, Any]]) -> list[str]:
    m, base, ceil = (full[k]["img_s"] for k in ("medimg", "baseline", "ceiling"))
    return [
        _check(model, "full: medimg / baseline", f"{m / base:.2f}x", ">= 2.5x", m / base >= 2.5),
        _check(model, "full: medimg / ceiling", f"{100 * m / ceil:.0f}%", ">= 85%", m / ceil >= 0.85),
    ]


def _head_targets(model: str, full: dict, head: dict, head_epochs: int) -> list[str]:
    f_img = full["medimg"]["img_s"]
    ratio = head["medimg"]["img_s"] / f_img
    check = f"medimg head ({head_epochs} epochs, feature cache) / full"
    lines = [_check(model, check, f"{ratio:.2f}x", ">= 3x", ratio >= 3)]
    ex = head["medimg"].get("extract_img_s")
    if ex:
        check = "feature extraction alone (a 1-epoch head phase at most) / full"
        lines.append(_check(model, check, f"{ex / f_img:.2f}x", ">= 3x", ex / f_img >= 3))
    ratio = head["images"]["img_s"] / f_img
    cratio = head["ceiling"]["img_s"] / full["ceiling"]["img_s"]
    check = "head on augmented images (feature_cache=false) / full"
    lines.append(_check(model, check, f"{ratio:.2f}x (ceiling: {cratio:.2f}x)", ">= 3x", ratio >= 3))
    return lines


def _vs_plain(r: dict[str, dict[str, Any]]) -> float:
    """medimg's steps/s (training on images) over the plain loop's on the same data."""
    return r["images"]["steps_s"] / r["plain"]["steps_s"]


def targets_table(measured: dict, models: list[str], stages: list[str], head_epochs: int) -> list[str]:
    """The targets, each with its value in this run and whether it is met."""
    lines = ["| model | check | value | target | met |", "|---|---|---:|---|---|"]
    for model in models:
        full, head = measured.get((model, "full")), measured.get((model, "head"))
        if full:
            lines += _full_targets(model, full)
        for stage in stages:
            ratio = _vs_plain(measured[(model, stage)])
            check = f"{stage}: medimg steps/s vs plain loop (medimg data)"
            lines.append(_check(model, check, f"{100 * (ratio - 1):+.1f}%", ">= -3%", ratio >= 0.97))
        if full and head:
            lines += _head_targets(model, full, head, head_epochs)
    gmean = statistics.geometric_mean([_vs_plain(r) for r in measured.values()])
    check = f"medimg steps/s vs plain loop, geometric mean of the {len(measured)} pairs"
    lines.append(_check("all", check, f"{100 * (gmean - 1):+.1f}%", ">= -3%", gmean >= 0.97))
    return lines
