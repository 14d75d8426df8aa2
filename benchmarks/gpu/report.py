"""The GPU check's closing table: the tests' outcome, medimg's rate against the bare step, the loader against
the GPU's training rate, utilisation, and the targets it is held to."""

from __future__ import annotations

from typing import Any

A100_RESNET50_ANCHOR = 2470  # NVIDIA's published ResNet-50 mixed-precision training rate on one A100 (images/s)


def _rate(v: float | None) -> str:
    return f"{v:,.0f}" if isinstance(v, int | float) else "n/a"


def _pct(a: float | None, b: float | None) -> str:
    return f"{100 * a / b:.0f}%" if isinstance(a, int | float) and isinstance(b, int | float) and b else "n/a"


def _util(row: dict[str, Any]) -> str:
    u = row.get("utilisation") or {}
    return f"{u['median']:.0f}% (n={u['n']})" if u.get("n") else "n/a"


def _bare(rows: list[dict[str, Any]], model: str, stage: str, **opts: Any) -> dict[str, Any]:
    for r in rows:
        if r.get("model") == model and r.get("stage") == stage and all(r.get(k, False) == v for k, v in opts.items()):
            return r
    return {}


def tests_line(tests: dict[str, Any] | None) -> str:
    if not tests:
        return "GPU tests: not run"
    c = tests.get("counts", {})
    state = " (time box over)" if tests.get("timed_out") else ""
    failed = [t["test"] for t in tests.get("tests", []) if t["outcome"] in ("failure", "error")]
    return (f"GPU tests: {c.get('passed', 0)} passed, {c.get('failure', 0) + c.get('error', 0)} failed, "
            f"{c.get('skipped', 0)} skipped in {tests.get('wall_s', 0):.0f} s{state}"
            + (f"; failed: {', '.join(failed)}" if failed else ""))


def throughput_lines(t: dict[str, Any]) -> list[str]:
    """Rows per model and stage, the loader line and the bare-step options."""
    bare, s = t.get("bare") or [], t.get("settings", {})
    lines = [f"Throughput at {s.get('img_size')} px, batch {s.get('batch')}, {s.get('workers')} loader workers, "
             f"{s.get('n_train')} training images:",
             "| model | stage | medimg images/s | bare step images/s | % of bare | GPU util median | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for row in t.get("medimg") or []:
        b = _bare(bare, row["model"], row["stage"])
        if row.get("error"):
            lines.append(f"| {row['model']} | {row['stage']} | failed | {_rate(b.get('images_per_s'))} | | | "
                         f"{row['error']} |")
        elif row["stage"] == "full":
            lines.append(f"| {row['model']} | full{row.get('label', '')} | {_rate(row.get('images_per_s'))} | {_rate(b.get('images_per_s'))} "
                         f"| {_pct(row.get('images_per_s'), b.get('images_per_s'))} | {_util(row)} | steady "
                         f"{row.get('steps_steady')} of {row.get('steps_timed')} timed steps"
                         + (f"; bare step peak memory {b['peak_memory_gib']} GiB" if b.get("peak_memory_gib") else "")
                         + " |")
        else:
            ex = row.get("extract_images_per_s")
            lines.append(f"| {row['model']} | head | {_rate(row.get('images_per_s'))} | {_rate(b.get('images_per_s'))} "
                         f"| {_pct(ex, b.get('images_per_s'))} | {_util(row)} | feature cache, "
                         f"{row.get('epochs')} epochs; extraction {_rate(ex)} images/s (its % of the bare head step) |")
    loader, r18 = t.get("loader") or {}, _bare(bare, "resnet18", "full").get("images_per_s")
    if loader.get("images_per_s"):
        ratio = loader["images_per_s"] / r18 if r18 else None
        lines.append(f"Loader alone ({loader.get('workers')} workers, decoded cache + train transform): "
                     f"{_rate(loader['images_per_s'])} images/s = "
                     + (f"{ratio:.2f}x the device's ResNet18 training rate, bare step" if ratio else "n/a"))
        dev = loader.get("device_images_per_s")
        if dev:
            ratio = dev / r18 if r18 else None
            lines.append(f"Loader with augmentation on the device (whole uint8 batches from the cache, the default): "
                         f"{_rate(dev)} images/s = " + (f"{ratio:.2f}x the bare ResNet18 step (target >= 1.2x)"
                                                         if ratio else "n/a"))
    else:
        lines.append(f"Loader alone: failed (exit {loader.get('rc')}; see throughput.log)")
    for o in t.get("bare_options") or []:
        what = "torch.compile" if o.get("compile") else "cudnn.benchmark=True"
        base = _bare(bare, o["model"], o["stage"]).get("images_per_s")
        note = f"first step {o['first_step_s']:.0f} s" if o.get("compile") and o.get("first_step_s") else ""
        lines.append(f"Bare step {o['model']} {o['stage']} with {what}: {_rate(o.get('images_per_s'))} images/s "
                     f"({_pct(o.get('images_per_s'), base)} of the plain bare step) {note}".rstrip()
                     + (f" error: {o['error']}" if o.get("error") else ""))
    r50 = _bare(bare, "resnet50", "full").get("images_per_s")
    if r50:
        lines.append(f"Anchor: bare ResNet50 full {r50:,.0f} images/s = {r50 / A100_RESNET50_ANCHOR:.2f}x NVIDIA's "
                     f"A100 mixed-precision figure ({A100_RESNET50_ANCHOR:,} images/s)")
    return lines


def setup_line(setup: dict[str, Any]) -> str:
    if setup.get("error"):
        return f"Setup: {setup['error']}"
    state = "entry points import" if setup.get("rc") == 0 else "importing the entry points FAILED (see setup.log)"
    wheels = setup.get("missing_before") or []
    return (f"Setup: {state}; Python {setup.get('python', '?')}; from the wheels: {', '.join(wheels) or 'nothing'}"
            + (f"; still missing: {', '.join(setup['missing_after'])}" if setup.get("missing_after") else ""))


def render(summary: dict[str, Any]) -> str:
    setup = summary.get("setup") or {}
    gpu, versions = setup.get("gpu") or {}, setup.get("versions") or {}
    head = (f"medimg GPU check ({summary.get('mode')}): {gpu.get('name', 'no GPU')}, torch "
            f"{versions.get('torch') or summary.get('torch')}, lightning {versions.get('lightning')}; "
            f"{summary.get('elapsed_s', 0):.0f} s of a {summary.get('budget_s', 0):.0f} s budget")
    lines = [head, setup_line(setup), tests_line(summary.get("tests"))]
    if summary.get("throughput"):
        lines += ["", *throughput_lines(summary["throughput"])]
    lines += ["", "Targets: medimg full >= 90% of the bare step (ResNet18, ResNet50); loader >= 1.2x the ResNet18 "
              "training rate; steady GPU utilisation > 90%."]
    return "\n".join(lines)
