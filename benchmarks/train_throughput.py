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
  step times read from ``<run>/throughput.json`` (medimg/callbacks/step_timer.py).
- **plain loop (medimg data)**: medimg's own data module loaders, model, precision and channels_last in a
  plain loop without Lightning: the difference to **medimg** is Lightning's (and the module's logging) cost.
- **ceiling**: medimg's model and optimiser on tensors already in memory (bf16 autocast + channels_last, and
  fp32 for reference): what the machine computes when nothing else runs.

Peak memory: ``RSS`` is the measured process's ru_maxrss; ``PSS`` is the peak of the summed proportional set
size of the process and its loader workers (shared pages counted once), sampled every 3 s. ``others' CPU``
is the share of the machine that other processes used during a measurement (0% = a quiet machine).

    python benchmarks/train_throughput.py                 # the full table (+ options), ~25 min on 2 cores
    python benchmarks/train_throughput.py --quick         # resnet18, head + full, few steps (~2 min): a smoke
                                                          # test; its 2 warm-up steps leave the prefetch queue full
    python benchmarks/train_throughput.py --models resnet18 --stages full --steps 12 --no-options
    python benchmarks/train_throughput.py --accuracy      # bf16 vs fp32 test AUROC on experiment=synthetic
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "benchmarks" / ".data" / "train_throughput"
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")  # HAM10000's seven classes
EVAL_IMAGES = 14  # per val/test split: 2 per class (the benchmark runs neither)

# ---------------------------------------------------------------------------------------------- data


def make_images(root: Path, n_train: int, seed: int = 0) -> Path:
    """``root/{train,val,test}/<class>/*.jpg``: 600x450 JPEGs (quality 90), skin-like background, a lesion,
    fine texture (~90 KB each, like HAM10000's); classes round-robin. Existing files are kept."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFilter

    rng = np.random.default_rng(seed)
    xx = np.arange(600, dtype=np.float64)[None, :].repeat(450, 0)
    for split, n in (("train", n_train), ("val", EVAL_IMAGES), ("test", EVAL_IMAGES)):
        for i in range(n):
            cls = CLASSES[i % len(CLASSES)]
            p = root / split / cls / f"{split}_{i:05d}.jpg"
            tone = rng.uniform(150, 220, 3)
            tilt, cx, cy, r = (
                rng.uniform(-1, 1),
                rng.uniform(200, 400),
                rng.uniform(150, 300),
                rng.uniform(40, 120),
            )
            noise_seed = int(rng.integers(2**31))
            if p.exists():
                continue
            p.parent.mkdir(parents=True, exist_ok=True)
            base = tone - 0.05 * (xx[..., None] - 300) * tilt
            img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
            ImageDraw.Draw(img).ellipse(
                [cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r],
                fill=tuple(int(v) for v in tone * (0.35 + 0.05 * (i % 7))),
            )
            smooth = np.asarray(img.filter(ImageFilter.GaussianBlur(3)), dtype=np.float32)
            textured = smooth + np.random.default_rng(noise_seed).normal(0, 8, (450, 600, 1))
            Image.fromarray(np.clip(textured, 0, 255).astype(np.uint8)).save(p, quality=90)
    return root


def prepare_data(root: Path, img_size: int) -> None:
    """Scan the images and build the decoded-image cache once, so no measured run pays for either."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from medimg.data.datamodule import MedImageDataModule

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[
                "dataset=folder",
                f"dataset.root={root}",
                f"dataset.img_size={img_size}",
                "dataset.cache=true",
            ],
        )
    dm = MedImageDataModule(OmegaConf.to_container(cfg.dataset, resolve=True))
    dm.prepare_data()
    dm.setup("fit")


# ---------------------------------------------------------------------------------------------- one configuration
# (runs inside its own process: ``train_throughput.py --one '<json spec>'``)


def _compose(overrides: list[str]) -> dict[str, Any]:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    c = {
        k: OmegaConf.to_container(cfg[k], resolve=True)
        for k in ("dataset", "backbone", "stage", "model", "trainer")
    }
    return {**c, "seed": int(cfg.seed)}


def _first_phase(c: dict[str, Any]) -> tuple[str, Any, float]:
    name, ph = next(iter(c["stage"]["phases"].items()))
    return name, ph["train_blocks"], float(ph["lr"])


def _timed(next_batch, step, steps: int, warmup: int) -> list[float]:
    """Wall time of each step after ``warmup``: from the end of one step to the end of the next."""
    out, last = [], time.perf_counter()
    for i in range(warmup + steps):
        step(*next_batch())
        now = time.perf_counter()
        if i >= warmup:
            out.append(now - last)
        last = now
    return out


def _looped(loader):
    it = iter(loader)

    def next_batch():
        nonlocal it
        try:
            batch = next(it)
        except StopIteration:
            it = iter(loader)
            batch = next(it)
        return batch[0], batch[1]

    return next_batch


def run_baseline(spec: dict[str, Any]) -> list[float]:
    import torch
    from torch import nn
    from torch.utils.data import DataLoader
    from torchvision import datasets
    from torchvision import transforms as T

    from medimg.models.backbones import HEAD, blocks_of, build_backbone
    from medimg.models.freezing import resolve_blocks

    c = _compose(spec["overrides"])
    _, train_blocks, lr = _first_phase(c)
    torch.manual_seed(0)
    size = int(c["dataset"]["img_size"])
    tf = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.7, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(0.3),
            T.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.02),
            T.RandomRotation(15),
            T.ToTensor(),
            T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    ds = datasets.ImageFolder(str(Path(c["dataset"]["root"]) / "train"), transform=tf)
    loader = DataLoader(ds, batch_size=spec["batch"], shuffle=True, num_workers=spec.get("workers", 2))
    net = build_backbone(c["backbone"]["name"], len(ds.classes), weights=None)
    trainable = resolve_blocks(train_blocks, blocks_of(c["backbone"]["name"]))
    for name, module in net.named_children():
        for p in module.parameters():
            p.requires_grad_(name in trainable or name == HEAD)
    net.train()
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    criterion = nn.CrossEntropyLoss()

    def step(x, y):
        loss = criterion(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _timed(_looped(loader), step, spec["steps"], spec["warmup"])


def _medimg_model(c: dict[str, Any]):
    """medimg's model, data module and resolved trainer settings for the composed config ``c``."""
    import lightning as L

    from medimg.data.datamodule import MedImageDataModule
    from medimg.train import build_model
    from medimg.trainer_builder import trainer_kwargs

    L.seed_everything(c["seed"], workers=True, verbose=False)
    dm = MedImageDataModule(c["dataset"])
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(c, dm)
    name, blocks, lr = _first_phase(c)
    model.set_phase(name, blocks, lr, 1)
    model.train()
    return model, dm, trainer_kwargs(c["trainer"])


def _medimg_step(model, precision: str):
    """Forward (autocast as Lightning's precision plugin does), loss, backward, optimiser step."""
    import torch

    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    bf16 = precision.startswith("bf16")

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model._loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def run_plain(spec: dict[str, Any]) -> list[float]:
    import torch

    c = _compose(spec["overrides"])
    model, dm, kw = _medimg_model(c)
    if kw["deterministic"]:
        torch.use_deterministic_algorithms(True)
    step = _medimg_step(model, kw["precision"])
    return _timed(_looped(dm.train_dataloader()), step, spec["steps"], spec["warmup"])


def run_ceiling(spec: dict[str, Any]) -> list[float]:
    import torch

    c = _compose(spec["overrides"])
    model, dm, kw = _medimg_model(c)
    if spec.get("weights_channels_last"):
        model.net.to(memory_format=torch.channels_last)
    if spec.get("compile"):
        model.net = torch.compile(model.net)
    size = int(c["dataset"]["img_size"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], 3, size, size, generator=g)
    y = torch.randint(0, dm.num_classes, (spec["batch"],), generator=g)
    step = _medimg_step(model, kw["precision"])
    t0 = time.perf_counter()
    step(x, y)  # first step apart: with torch.compile this is the compilation
    spec["first_step_s"] = time.perf_counter() - t0
    return _timed(lambda: (x, y), step, spec["steps"], max(0, spec["warmup"] - 1))


CEILING_WARMUP = 2  # no loader to fill: the first step (kernel selection) and one more


def loader_pipelines(size: int) -> dict[str, tuple[str, Any]]:
    """Per-image loading pipelines: (reader, transform). The variant is the same augmentation with torchvision's
    own ColorJitter and RandomRotation on uint8 tensors (what medimg's fused colour matrix and PIL rotation
    replace)."""
    import torch
    from torchvision import transforms as T
    from torchvision.transforms import v2

    from medimg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, train_transform

    mean, std = list(IMAGENET_MEAN), list(IMAGENET_STD)
    baseline = T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.7, 1.0)),
            T.RandomHorizontalFlip(),
            T.RandomVerticalFlip(0.3),
            T.ColorJitter(0.2, 0.2, 0.2, 0.02),
            T.RandomRotation(15),
            T.ToTensor(),
            T.Normalize(mean, std),
        ]
    )
    medimg = train_transform(size)
    v2_tensors = v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.3),
            v2.ColorJitter(0.2, 0.2, 0.2, 0.02),
            v2.RandomRotation(15),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean, std),
        ]
    )
    return {
        "baseline: PIL decode + PIL transforms": ("pil", baseline),
        "medimg: JPEG decode + train transform": ("jpeg", medimg),
        "medimg: cache + train transform (the default)": ("cache", medimg),
        "variant: cache + torchvision v2 ColorJitter and RandomRotation on uint8 tensors": (
            "cache",
            v2_tensors,
        ),
    }


def run_loader(spec: dict[str, Any]) -> dict[str, float]:
    """Milliseconds per image of each pipeline on one thread: median of 3 passes over the images."""
    import torch
    from PIL import Image

    from medimg.data.readers import read_image

    torch.set_num_threads(1)
    torch.manual_seed(0)
    from medimg.data.datamodule import MedImageDataModule

    c = _compose(spec["overrides"])
    dm = MedImageDataModule(c["dataset"])
    dm.setup("fit")
    cache = dm.datasets["train"].reader
    paths = dm.datasets["train"].paths[: spec.get("images", 64)]
    readers = {"pil": lambda p: Image.open(p).convert("RGB"), "jpeg": read_image, "cache": cache}
    out = {}
    for name, (reader, tf) in loader_pipelines(int(c["dataset"]["img_size"])).items():
        read = readers[reader]
        tf(read(paths[0]))
        passes = []
        for _ in range(3):
            t0 = time.perf_counter()
            for p in paths:
                tf(read(p))
            passes.append(1000 * (time.perf_counter() - t0) / len(paths))
        out[name] = statistics.median(passes)
    return out


def run_one(spec: dict[str, Any]) -> None:
    import resource

    import torch

    if spec["kind"] == "loader":
        print("RESULT " + json.dumps({"ms_per_image": run_loader(spec)}), flush=True)
        return
    runner = {"baseline": run_baseline, "plain": run_plain, "ceiling": run_ceiling}[spec["kind"]]
    step_s = runner(spec)
    out = {
        "step_s": step_s,
        "threads": torch.get_num_threads(),
        "first_step_s": spec.get("first_step_s"),
        "children_max_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(out), flush=True)


# ---------------------------------------------------------------------------------------------- the harness


def _tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                continue
    pids, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        pids += frontier
    return pids


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


PSS_EVERY_S = 3.0


def _busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = Path("/proc/stat").read_text().split()[1:9]
    return sum(int(v) for v in (user, nice, system, irq, softirq, steal)) / os.sysconf("SC_CLK_TCK")


def measure_process(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run ``cmd`` to completion; its exit code, wall time, ru_maxrss and peak PSS of its process tree, and
    ``others``: the share of the machine's CPU that other processes took meanwhile (0 = a quiet machine)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    busy0, own0 = _busy_cpu_s(), sum(os.times()[:2])
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        peak_pss, next_sample = 0, time.perf_counter() + 1.0
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() >= next_sample:  # reading smaps costs ~10 ms per GiB: not too often
                peak_pss = max(peak_pss, sum(_pss_kib(p) for p in _tree(proc.pid)))
                next_sample = time.perf_counter() + PSS_EVERY_S
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    others = _busy_cpu_s() - busy0 - (usage.ru_utime + usage.ru_stime) - (sum(os.times()[:2]) - own0)
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "others": max(0.0, others) / (wall * (os.cpu_count() or 1)),
        "rss_mib": usage.ru_maxrss / 1024,
        "pss_mib": peak_pss / 1024,
    }


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.batch, self.steps, self.warmup = args.batch_size, args.steps, args.warmup
        self.root = DATA / f"ham-like-n{args.images}"
        self.out = DATA / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.rows: list[dict[str, Any]] = []

    def overrides(self, model: str, stage: str, extra: list[str] = ()) -> list[str]:
        return [
            "dataset=folder",
            f"dataset.root={self.root}",
            f"dataset.img_size={self.args.img_size}",
            f"dataset.batch_size={self.batch}",
            f"backbone={model}",
            "backbone.weights=null",
            f"stage={stage}",
            *extra,
        ]

    def _summary(self, step_s: list[float]) -> dict[str, float]:
        med = statistics.median(step_s)
        return {
            "img_s": self.batch / med,
            "steps_s": 1.0 / med,
            "n": len(step_s),
            "spread": (max(step_s) - min(step_s)) / med,
        }

    def run(
        self, kind: str, model: str, stage: str, label: str, extra: list[str] = (), **spec
    ) -> dict[str, Any]:
        """Measure one configuration; again (up to ``--retries`` times, after waiting for a quiet machine)
        when other processes took more than ``--max-others`` of the CPU meanwhile."""
        for attempt in range(self.args.retries + 1):
            row = self._run_once(kind, model, stage, label, list(extra), attempt, **spec)
            if row["others"] <= self.args.max_others or attempt == self.args.retries:
                break
            print(
                f"  (other processes took {row['others']:.0%} of the CPU: measuring again once it is quiet)",
                file=sys.stderr,
                flush=True,
            )
            wait_quiet(300)
        row["attempts"] = attempt + 1
        self.rows.append(row)
        (self.out / "rows.json").write_text(json.dumps(self.rows, indent=1))  # kept if a later run fails
        return row

    def _run_once(
        self, kind: str, model: str, stage: str, label: str, extra: list[str], attempt: int, **spec
    ) -> dict[str, Any]:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}-{stage}-{label}").strip("_")
        name += f"-again{attempt}" if attempt else ""
        if kind == "medimg":
            run_dir = self.out / name
            cmd = [
                sys.executable,
                "-m",
                "medimg.train",
                *self.overrides(model, stage, extra),
                *(
                    [f"trainer.max_epochs={spec['fit_epochs']}"]  # whole epochs: the phase as a user runs it
                    if spec.get("fit_epochs")
                    else ["trainer.max_epochs=1", f"trainer.limit_train_batches={self.warmup + self.steps}"]
                ),
                "trainer.limit_val_batches=0",
                "test=false",
                "callbacks.early_stopping.enabled=false",
                "logger=csv",
                "calibration=none",
                "callbacks.throughput=true",
                f"hydra.run.dir={run_dir}",
            ]
        else:
            spec = {
                "kind": kind,
                "overrides": self.overrides(model, stage, extra),
                "batch": self.batch,
                "steps": self.args.ceiling_steps if kind == "ceiling" else self.steps,
                "warmup": CEILING_WARMUP if kind == "ceiling" else self.warmup,
                **spec,
            }
            cmd = [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)]
        proc = measure_process(cmd, self.out / f"{name}.log")
        log_text = (self.out / f"{name}.log").read_text()
        if proc["rc"] != 0:
            raise RuntimeError(
                f"{name} failed (exit {proc['rc']}); last lines of {self.out / name}.log:\n"
                + "\n".join(log_text.splitlines()[-25:])
            )
        if kind == "medimg" and spec.get("fit_epochs"):
            entry = next(iter(json.loads((run_dir / "throughput.json").read_text()).values()))
            n_train = entry["images_trained"] // entry["epochs"]
            step_s, extra_info = (
                [],
                {
                    "fit_s": entry["fit_s"],
                    "epochs": entry["epochs"],
                    "extract_img_s": n_train / entry["feature_extract_s"]["train"]
                    if entry.get("feature_extract_s")
                    else None,
                },
            )
        elif kind == "medimg":
            entry = next(iter(json.loads((run_dir / "throughput.json").read_text()).values()))
            all_steps = entry.get("warmup_step_s", []) + entry["step_s"]
            step_s, extra_info = all_steps[self.warmup :], {}
        else:
            result = json.loads(next(ln for ln in log_text.splitlines() if ln.startswith("RESULT "))[7:])
            step_s, extra_info = result["step_s"], {"first_step_s": result.get("first_step_s")}
        if step_s:
            summary = self._summary(step_s)
        else:  # a whole-phase figure: all images trained over the fit's wall time
            summary = {"img_s": entry["images_per_s_fit"], "steps_s": float("nan"), "n": 0, "spread": 0.0}
        row = {
            "kind": kind,
            "model": model,
            "stage": stage,
            "label": label,
            **summary,
            "step_s": step_s,
            "rss_mib": proc["rss_mib"],
            "pss_mib": proc["pss_mib"],
            "wall_s": proc["wall_s"],
            "others": proc["others"],
            **extra_info,
        }
        print(
            f"  {name:<44} {row['img_s']:7.1f} img/s  (spread {row['spread']:.0%}, others' CPU {row['others']:.0%}, "
            f"{row['wall_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        return row


def main_table(b: Bench, models: list[str], stages: list[str]) -> list[str]:
    fp32 = ["trainer.precision=32", "model.channels_last=false"]
    best = ["trainer.precision=bf16-mixed", "model.channels_last=true"]
    lines = [
        "| model | stage | configuration | images/s | x baseline | % of ceiling | peak RSS MiB | "
        "peak PSS MiB (+workers) | others' CPU |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    summary: dict[tuple[str, str], dict[str, dict[str, Any]]] = {}
    for model in models:
        for stage in stages:
            r = {"baseline": b.run("baseline", model, stage, "baseline")}
            if stage == "head":  # the default: features computed once, the head trains on them
                r["medimg"] = b.run(
                    "medimg",
                    model,
                    stage,
                    f"medimg ({b.args.head_epochs} epochs incl. feature extraction)",
                    fit_epochs=b.args.head_epochs,
                )
                r["images"] = b.run(
                    "medimg",
                    model,
                    stage,
                    "medimg, feature_cache=false",
                    ["stage.phases.head.feature_cache=false"],
                )
            else:
                r["medimg"] = b.run("medimg", model, stage, "medimg")
                r["images"] = r["medimg"]
            r["plain"] = b.run("plain", model, stage, "plain loop (medimg data)")
            r["ceiling"] = b.run("ceiling", model, stage, "ceiling bf16+CL", best)
            r["ceiling32"] = b.run("ceiling", model, stage, "ceiling fp32", fp32)
            summary[(model, stage)] = r
            for key in dict.fromkeys(("baseline", "medimg", "images", "plain", "ceiling", "ceiling32")):
                row = r[key]
                if key == "images" and row is r["medimg"]:
                    continue
                lines.append(
                    f"| {model} | {stage} | {row['label']} | {row['img_s']:.1f} | "
                    f"{row['img_s'] / r['baseline']['img_s']:.2f}x | {100 * row['img_s'] / r['ceiling']['img_s']:.0f}% | "
                    f"{row['rss_mib']:.0f} | {row['pss_mib']:.0f} | {row['others']:.0%} |"
                )
    lines += ["", "Targets (ratios from this run):", ""]
    lines += ["| model | check | value | target | met |", "|---|---|---:|---|---|"]
    for model in models:
        full, head = summary.get((model, "full")), summary.get((model, "head"))
        if full:
            m, base, ceil, plain = (full[k]["img_s"] for k in ("medimg", "baseline", "ceiling", "plain"))
            lines.append(
                f"| {model} | full: medimg / baseline | {m / base:.2f}x | >= 2.5x | {'yes' if m / base >= 2.5 else 'no'} |"
            )
            lines.append(
                f"| {model} | full: medimg / ceiling | {100 * m / ceil:.0f}% | >= 85% | {'yes' if m / ceil >= 0.85 else 'no'} |"
            )
        for stage in stages:
            s = summary[(model, stage)]
            ratio = s["images"]["steps_s"] / s["plain"]["steps_s"]
            lines.append(
                f"| {model} | {stage}: medimg steps/s vs plain loop (medimg data) | {100 * (ratio - 1):+.1f}% | "
                f">= -3% | {'yes' if ratio >= 0.97 else 'no'} |"
            )
        if full and head:
            f_img = full["medimg"]["img_s"]
            ratio = head["medimg"]["img_s"] / f_img
            lines.append(
                f"| {model} | medimg head ({b.args.head_epochs} epochs, feature cache) / full | {ratio:.2f}x | >= 3x | "
                f"{'yes' if ratio >= 3 else 'no'} |"
            )
            ex = head["medimg"].get("extract_img_s")
            if ex:
                lines.append(
                    f"| {model} | feature extraction alone (a 1-epoch head phase at most) / full | {ex / f_img:.2f}x | "
                    f">= 3x | {'yes' if ex / f_img >= 3 else 'no'} |"
                )
            ratio = head["images"]["img_s"] / f_img
            cratio = head["ceiling"]["img_s"] / full["ceiling"]["img_s"]
            lines.append(
                f"| {model} | head on augmented images (feature_cache=false) / full | {ratio:.2f}x "
                f"(ceiling: {cratio:.2f}x) | >= 3x | {'yes' if ratio >= 3 else 'no'} |"
            )
    ratios = [r["images"]["steps_s"] / r["plain"]["steps_s"] for r in summary.values()]
    gmean = statistics.geometric_mean(ratios)
    lines.append(
        f"| all | medimg steps/s vs plain loop, geometric mean of the {len(ratios)} pairs | "
        f"{100 * (gmean - 1):+.1f}% | >= -3% | {'yes' if gmean >= 0.97 else 'no'} |"
    )
    return lines


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


def options_table(b: Bench, model: str) -> list[str]:
    """Each option against a reference measured just before it: medimg as in the main table for the CLI
    options, the bf16+channels_last ceiling for the ceiling options."""
    lines = [
        "| model | stage | configuration | images/s | vs reference | peak PSS MiB (+workers) | others' CPU |",
        "|---|---|---|---:|---:|---:|---:|",
    ]
    refs = {
        "medimg": ("medimg", [], "reference: medimg (bf16, channels_last, cache, 2 workers)"),
        "ceiling": ("ceiling", [], "reference: ceiling bf16+CL"),
    }
    for stage, kind in dict.fromkeys((s, k) for s, _, k, *_ in OPTIONS):
        rkind, rextra, rlabel = refs[kind]
        if (stage, kind) == ("head", "medimg"):  # the options change the image path of the head phase
            rextra, rlabel = (
                ["stage.phases.head.feature_cache=false"],
                "reference: medimg, feature_cache=false",
            )
        ref = b.run(rkind, model, stage, rlabel, rextra)
        lines.append(
            f"| {model} | {stage} | {rlabel} | {ref['img_s']:.1f} | 1.00x | {ref['pss_mib']:.0f} | "
            f"{ref['others']:.0%} |"
        )
        for s, label, k, extra, spec in OPTIONS:
            if (s, k) != (stage, kind):
                continue
            try:
                row = b.run(k, model, stage, label, extra, **spec)
            except RuntimeError as e:
                print(e, file=sys.stderr)
                lines.append(f"| {model} | {stage} | {label} | failed (see the log) | | | |")
                continue
            note = f" (first step {row['first_step_s']:.0f} s)" if spec.get("compile") else ""
            lines.append(
                f"| {model} | {stage} | {label}{note} | {row['img_s']:.1f} | {row['img_s'] / ref['img_s']:.2f}x | "
                f"{row['pss_mib']:.0f} | {row['others']:.0%} |"
            )
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


def loader_table(b: Bench, model: str) -> list[str]:
    """What one loader worker spends per training image (one thread, no model running)."""
    spec = {"kind": "loader", "overrides": b.overrides(model, "full"), "images": 64}
    name = "loader-cost"
    proc = measure_process(
        [sys.executable, str(Path(__file__).resolve()), "--one", json.dumps(spec)], b.out / f"{name}.log"
    )
    text = (b.out / f"{name}.log").read_text()
    if proc["rc"] != 0:
        raise RuntimeError(f"{name} failed; see {b.out / name}.log")
    ms = json.loads(next(ln for ln in text.splitlines() if ln.startswith("RESULT "))[7:])["ms_per_image"]
    lines = ["| loading pipeline (one thread) | ms per image | images/s per core |", "|---|---:|---:|"]
    lines += [f"| {k} | {v:.1f} | {1000 / v:.0f} |" for k, v in ms.items()]
    return lines


def _synthetic_run(b: Bench, run_dir: Path, overrides: list[str]) -> tuple[dict, dict, dict]:
    """``python -m medimg.train experiment=synthetic <overrides>`` in ``run_dir``: (process figures, test
    metrics, step-timer entries)."""
    cmd = [
        sys.executable,
        "-m",
        "medimg.train",
        "experiment=synthetic",
        *overrides,
        "callbacks.throughput=true",
        f"hydra.run.dir={run_dir}",
    ]
    proc = measure_process(cmd, b.out / f"{run_dir.name}.log")
    if proc["rc"] != 0:
        raise RuntimeError(f"{run_dir.name} failed; see {b.out / run_dir.name}.log")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return proc, metrics, json.loads((run_dir / "throughput.json").read_text())


def accuracy(b: Bench, seeds: list[int]) -> list[str]:
    """Full ``experiment=synthetic`` runs per seed: bf16-mixed (+channels_last, auto) vs fp32 (channels_last
    off). Two runs of one seed differ by precision only; other seeds show how far runs differ anyway."""
    lines = [
        "| seed | precision | test AUROC | test accuracy | train images/s (96 px) | wall time | others' CPU |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    c = _compose(["experiment=synthetic"])  # generate the data set first: no run pays for it
    from medimg.data.datamodule import MedImageDataModule

    dm = MedImageDataModule(c["dataset"])
    dm.prepare_data()
    dm.setup("fit")
    auroc: dict[tuple[int, str], float] = {}
    settings = {
        "bf16": ["trainer.precision=bf16-mixed"],
        "fp32": ["trainer.precision=32", "model.channels_last=false"],
    }
    for seed in seeds:
        for label, extra in settings.items():
            run_dir = b.out / f"accuracy-seed{seed}-{label}"
            proc, metrics, thr = _synthetic_run(b, run_dir, [f"seed={seed}", *extra])
            img_s = statistics.median(v["images_per_s"] for v in thr.values() if v.get("steps_timed"))
            auroc[(seed, label)] = metrics["test/auroc"]
            name = "bf16-mixed + channels_last" if label == "bf16" else "fp32"
            lines.append(
                f"| {seed} | {name} | {metrics['test/auroc']:.4f} | {metrics.get('test/accuracy', float('nan')):.4f} | "
                f"{img_s:.1f} | {proc['wall_s'] / 60:.1f} min | {proc['others']:.0%} |"
            )
            print(lines[-1], file=sys.stderr, flush=True)
    lines.append("")
    for seed in seeds:
        diff = auroc[(seed, "bf16")] - auroc[(seed, "fp32")]
        lines.append(
            f"- seed {seed}: AUROC(bf16) - AUROC(fp32) = {diff:+.4f} "
            f"(target |difference| <= 0.01: {'met' if abs(diff) <= 0.01 else 'missed'})"
        )
    if len(seeds) > 1:
        for label in settings:
            vals = [auroc[(s, label)] for s in seeds]
            lines.append(f"- {label}: AUROC across seeds {min(vals):.4f} to {max(vals):.4f}")
    lines += [
        "",
        *feature_cache_accuracy(b, b.out / f"accuracy-seed{seeds[0]}-bf16" / "checkpoints" / "best.ckpt"),
    ]
    return lines


def feature_cache_accuracy(b: Bench, backbone_ckpt: Path) -> list[str]:
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
            "stage=head",
            f"backbone.weights={backbone_ckpt}",
            f"stage.phases.head.feature_cache={flag}",
        ]
        proc, metrics, thr = _synthetic_run(b, run_dir, overrides)
        thr = thr["head"]
        lines.append(
            f"| {label} | {metrics['test/auroc']:.4f} | {metrics['test/accuracy']:.4f} | "
            f"{thr['fit_s']:.0f} s ({thr['epochs']} epochs) | {proc['others']:.0%} |"
        )
        print(lines[-1], file=sys.stderr, flush=True)
    return lines


def machine() -> str:
    import torch

    model = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines()
            if ln.startswith("Model name")
        ),
        platform.processor(),
    )
    bf16 = bool(getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)())
    return (
        f"{model}, {os.cpu_count()} cores, avx512_bf16 {'yes' if bf16 else 'no'}, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB; torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )


def _others_busy(seconds: float = 5.0) -> float:
    """Share of the machine's CPU that other processes use over the next ``seconds``."""
    busy0, own0 = _busy_cpu_s(), sum(os.times()[:2])
    time.sleep(seconds)
    others = _busy_cpu_s() - busy0 - (sum(os.times()[:2]) - own0)
    return max(0.0, others) / (seconds * (os.cpu_count() or 1))


def wait_quiet(limit_s: float, threshold: float = 0.05) -> None:
    """Wait (up to ``limit_s``) until other processes use less than ``threshold`` of the CPU."""
    t0 = time.time()
    while time.time() - t0 < limit_s and _others_busy() >= threshold:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--quick", action="store_true", help="resnet18, head+full, 3 timed steps, no options (~3 min)"
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
    args = ap.parse_args()
    os.chdir(REPO)  # relative data paths (paths.root_dir) resolve as in the subprocesses
    if args.one:
        run_one(json.loads(args.one))
        return
    if args.quick:
        args.models, args.options = "resnet18", False
        args.stages = "head,full" if args.stages == ap.get_default("stages") else args.stages
        args.steps, args.warmup = args.steps or 3, min(args.warmup, 2)
        args.ceiling_steps = args.ceiling_steps or 3
    args.steps = args.steps or 8
    args.ceiling_steps = args.ceiling_steps or 5
    args.images = -(-(args.warmup + args.steps) * args.batch_size // 64) * 64  # every step a fresh batch
    models, stages = args.models.split(","), args.stages.split(",")

    b = Bench(args)
    wait_quiet(args.wait_quiet)
    started, load0 = dt.datetime.now(), os.getloadavg()
    print(f"medimg training throughput, {started:%Y-%m-%d %H:%M}", file=sys.stderr)
    lines = [
        f"Command: `python benchmarks/train_throughput.py {' '.join(sys.argv[1:])}`".replace("  ", " "),
        f"Date: {started:%Y-%m-%d %H:%M}; machine: {machine()}",
        "",
    ]
    if args.accuracy:
        lines += accuracy(b, [int(v) for v in args.seeds.split(",")])
    else:
        make_images(b.root, args.images)
        prepare_data(b.root, args.img_size)
        lines[-1] = (
            f"{args.images} training JPEGs 600x450 -> {args.img_size} px, batch {b.batch}, "
            f"{args.warmup} warm-up + {args.steps} timed steps per configuration ({CEILING_WARMUP} + "
            f"{args.ceiling_steps} for the ceiling, which has no loader), median step time."
        )
        lines += ["", *main_table(b, models, stages)]
        if args.options:
            lines += [
                "",
                f"Lightning overhead side by side ({models[0]}, full; medimg and the plain loop alternating):",
                "",
                *overhead_table(b, models[0]),
            ]
            lines += [
                "",
                "Options (one change each against medimg as above):",
                "",
                *options_table(b, models[0]),
            ]
            lines += ["", "Loading cost per training image:", "", *loader_table(b, models[0])]
    load1 = os.getloadavg()
    lines += [
        "",
        f"Load average (1/5/15 min): {load0[0]:.2f}/{load0[1]:.2f}/{load0[2]:.2f} at the start, "
        f"{load1[0]:.2f}/{load1[1]:.2f}/{load1[2]:.2f} at the end; {(dt.datetime.now() - started).seconds / 60:.1f} min; "
        f"logs in {b.out.relative_to(REPO)}",
    ]
    print("\n".join(lines))


if __name__ == "__main__":
    main()
