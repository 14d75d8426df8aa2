"""Step 2 of the GPU check: medimg's training rate on the GPU against the bare step, the loader alone, and
GPU utilisation, each measurement a time-boxed process.

- **medimg**: ``python -m medimg.train trainer=gpu dataset=folder ... callbacks.throughput=true``; the rate is
  read from ``throughput.json`` (per-step wall times). By default the training split is held on the GPU
  (``dataset.device_resident=auto``); one more resnet18 run reads it through the loader workers instead. ``full``: one epoch, all batches full; the steady rate
  leaves out the first steps that the loader workers' prefetch queue may have served (``workers`` x 2).
  ``head``: the feature-cached head phase over ``head_epochs`` epochs, extraction included; its extraction
  rate is the frozen backbone's forward pass over the training images.
- **bare**: ``gpu/bare_step.py`` (in-memory tensors, bf16, channels_last; cudnn.benchmark and torch.compile as
  options).
- **loader**: ``gpu/loader_rate.py`` (decoded cache + train transform, one worker per core).
- **utilisation**: nvidia-smi samples in the steady window of each medimg run (the timed steps' span, ending
  when ``throughput.json`` was written).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu.procs import Budget, python_cmd, run_boxed
from gpu.smi import UtilSampler, summarise

GPU_DIR = Path(__file__).resolve().parent


@dataclass
class Ctx:
    """What every measurement needs: sizes, folders, the environment and the budget."""

    repo: Path
    work: Path
    log: Path
    env: dict[str, str]
    budget: Budget
    cuda: bool
    img_size: int
    batch: int
    workers: int
    head_epochs: int
    n_train: int
    bare_steps: int
    sampler: UtilSampler = field(default_factory=UtilSampler)
    save: Callable[[dict[str, Any]], None] = lambda results: None  # called with the results after each step

    @property
    def data_root(self) -> Path:
        return self.work / "data" / "images"


def _results(log: Path, since: int) -> list[dict[str, Any]]:
    """The ``RESULT {json}`` lines a step printed into ``log`` after byte ``since``."""
    text = log.read_bytes()[since:].decode(errors="replace")
    return [json.loads(ln[7:]) for ln in text.splitlines() if ln.startswith("RESULT ")]


def _boxed(ctx: Ctx, cmd: list[str], want_s: float, title: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    since = ctx.log.stat().st_size if ctx.log.exists() else 0
    r = run_boxed(cmd, ctx.log, ctx.budget.box(want_s), env=ctx.env, cwd=ctx.repo, title=title)
    return r, _results(ctx.log, since)


def make_data(ctx: Ctx, unique: int, val: int, test: int, want_s: float) -> dict[str, Any]:
    cmd = python_cmd(GPU_DIR / "data.py", "--root", ctx.work / "data", "--unique", unique, "--train", ctx.n_train,
                     "--val", val, "--test", test)
    r, _ = _boxed(ctx, cmd, want_s, "data: generate JPEGs and lay out the folder data set")
    return r


def loader_alone(ctx: Ctx, workers: int, want_s: float) -> dict[str, Any]:
    cmd = python_cmd(GPU_DIR / "loader_rate.py", "--root", ctx.data_root, "--paths-root", ctx.work, "--img-size",
                     ctx.img_size, "--batch-size", ctx.batch, "--workers", workers)
    r, rows = _boxed(ctx, cmd, want_s, "loader alone (builds the scan and the decoded cache first)")
    return {**r, **(rows[-1] if rows else {})}


def bare(ctx: Ctx, configs: list[dict[str, Any]], want_s: float, title: str) -> list[dict[str, Any]]:
    spec = {"configs": configs, "batch": ctx.batch, "img_size": ctx.img_size, "steps": ctx.bare_steps,
            "warmup": 5, "device": "cuda" if ctx.cuda else "cpu"}
    r, rows = _boxed(ctx, python_cmd(GPU_DIR / "bare_step.py", json.dumps(spec)), want_s, title)
    return [dict(row, process=r) for row in rows] or [dict(c, error=f"no result ({r})") for c in configs]


def cli_overrides(ctx: Ctx, model: str, stage: str, run_dir: Path, extra: list[str] = ()) -> list[str]:
    """The medimg CLI run of one measurement (see the module docstring)."""
    steps = ctx.n_train // ctx.batch
    limits = (["trainer.max_epochs=1", f"trainer.limit_train_batches={steps}"] if stage == "full"
              # the head trained by Lightning on cached features (the convex solve has no training steps to time)
              else [f"trainer.max_epochs={ctx.head_epochs}", "stage.phases.head.head_fit=epochs"])
    device = [] if ctx.cuda else ["trainer.accelerator=cpu"]
    return ["trainer=gpu", *device, "dataset=folder", f"dataset.root={ctx.data_root}",
            f"dataset.img_size={ctx.img_size}", f"dataset.batch_size={ctx.batch}",
            f"dataset.eval_batch_size={ctx.batch}", f"dataset.num_workers={ctx.workers}", f"backbone={model}",
            "backbone.weights=null", f"stage={stage}", *limits, "trainer.limit_val_batches=0", "test=false",
            "callbacks.early_stopping.enabled=false", "logger=csv", "calibration=none",
            "callbacks.throughput=true", f"paths.root_dir={ctx.work}", f"hydra.run.dir={run_dir}", *extra]


def steady_full(entry: dict[str, Any], batch: int, skip: int) -> dict[str, Any]:
    """Rates of a ``full`` run from its timed steps: all of them, and the steady ones after ``skip``."""
    timed = entry.get("step_s") or []
    skip = min(skip, len(timed) // 2)
    steady = timed[skip:]
    out = {"steps_timed": len(timed), "steps_steady": len(steady), "steady_s": sum(steady)}
    if steady:
        out.update(images_per_s=batch * len(steady) / sum(steady),
                   images_per_s_all_timed=batch * len(timed) / sum(timed),
                   images_per_s_median_step=entry.get("images_per_s"))
    return out


def head_rates(entry: dict[str, Any], n_train: int) -> dict[str, Any]:
    extract = (entry.get("feature_extract_s") or {}).get("train")
    return {"images_per_s": entry.get("images_per_s_fit"), "fit_s": entry.get("fit_s"),
            "epochs": entry.get("epochs"), "steady_s": entry.get("fit_s") or 0.0,
            "extract_images_per_s": n_train / extract if extract else None, "extract_s": extract}


def medimg_run(ctx: Ctx, model: str, stage: str, want_s: float, extra: list[str] = (),
               label: str = "") -> dict[str, Any]:
    """One medimg CLI run: its rates and the GPU utilisation of its steady window."""
    name = f"{model}-{stage}" + "".join(c if c.isalnum() else "_" for c in label)
    run_dir = ctx.work / "runs" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a file left by an earlier call must not pass for this one's
    cmd = python_cmd("-m", "medimg.train", *cli_overrides(ctx, model, stage, run_dir, extra))
    r, _ = _boxed(ctx, cmd, want_s, f"medimg {name}")
    row: dict[str, Any] = {"model": model, "stage": stage, "label": label, "process": r}
    path = run_dir / "throughput.json"
    if not path.is_file():
        return {**row, "error": f"no {path} (exit {r['rc']}{', time box over' if r['timed_out'] else ''})"}
    entry = next(iter(json.loads(path.read_text()).values()))
    rates = (steady_full(entry, ctx.batch, skip=2 * ctx.workers) if stage == "full"
             else head_rates(entry, ctx.n_train))
    end = path.stat().st_mtime
    window = ctx.sampler.window(end - rates["steady_s"], end)
    return {**row, **rates, "precision": entry.get("precision"), "utilisation": summarise(window)}


MODELS = ("resnet18", "resnet50")
OPTIONS = [{"model": m, "stage": "full", "cudnn_benchmark": True} for m in MODELS] + [
    {"model": "resnet18", "stage": "full", "compile": True}]


def measure_all(ctx: Ctx, unique: int, want: dict[str, float]) -> dict[str, Any]:
    """Every measurement in order of importance; each takes what its box and the budget allow. ``want``:
    seconds per kind of step (data, loader, medimg, bare, options)."""
    out: dict[str, Any] = {"settings": {"img_size": ctx.img_size, "batch": ctx.batch, "workers": ctx.workers,
                                        "n_train": ctx.n_train, "head_epochs": ctx.head_epochs,
                                        "bare_steps": ctx.bare_steps}}
    out["data"] = make_data(ctx, unique, val=max(ctx.batch, 64), test=64, want_s=want["data"])
    if out["data"]["rc"] != 0:
        return out
    ctx.sampler.start()
    try:
        out["loader"] = loader_alone(ctx, workers=os.cpu_count() or 1, want_s=want["loader"])
        ctx.save(out)
        out["medimg"] = [medimg_run(ctx, "resnet18", "full", want["medimg"])]
        ctx.save(out)
        out["bare"] = bare(ctx, [{"model": m, "stage": s} for s in ("full", "head") for m in MODELS], want["bare"],
                           "bare train step (bf16, channels_last)")
        for model, stage in (("resnet50", "full"), *((m, "head") for m in MODELS)):
            ctx.save(out)
            out["medimg"].append(medimg_run(ctx, model, stage, want["medimg"]))
        if ctx.budget.left() >= want["options"] / 2:
            ctx.save(out)
            out["bare_options"] = bare(ctx, OPTIONS, want["options"], "bare train step options")
        if ctx.budget.left() >= want["medimg"] / 2:  # the default holds a split this small on the GPU: the loader
            ctx.save(out)
            out["medimg"].append(medimg_run(ctx, "resnet18", "full", want["medimg"], ["dataset.device_resident=false"],
                                            label=" dataset.device_resident=false"))
        if ctx.budget.left() >= want["medimg"] / 2:  # medimg leaves cudnn.benchmark off unless asked
            ctx.save(out)
            out["medimg"].append(medimg_run(ctx, "resnet18", "full", want["medimg"], ["+trainer.benchmark=true"],
                                            label=" +trainer.benchmark=true"))
    finally:
        ctx.sampler.stop()
    out["utilisation_error"] = ctx.sampler.error
    return out
