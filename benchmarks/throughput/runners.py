"""The ways of training that the benchmark compares, each run inside its own process.

``train_throughput.py --one '<json spec>'`` calls ``run_one``, which prints one ``RESULT {json}`` line:

- **baseline**: a plain loop written the way the seed project trained: torchvision ``ImageFolder`` with PIL
  transforms, a DataLoader with 2 workers, fp32, Adam, CrossEntropyLoss; frozen blocks get
  ``requires_grad=False`` and the whole network stays in train mode.
- **plain**: medimg's own loaders, model, precision and channels_last in a plain loop without Lightning.
- **ceiling**: medimg's model and optimiser on tensors already in memory: what the machine computes when
  nothing else runs.
- **loader**: the loading cost per image of each input pipeline (see ``loading.py``).

(The fourth way, medimg itself, is its command line: see ``harness.py``.) Each step is timed from the end of
one step to the end of the next, data loading included, after ``spec['warmup']`` untimed steps.
"""

from __future__ import annotations

import json
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .build import (
    compose,
    data_module,
    first_phase,
    first_phase_model,
    preprocess,
    settings,
    trainer_settings,
)
from .loading import run_loader, seed_transform

CEILING_WARMUP = 2  # no loader to fill: the first step (kernel selection) and one more


def timed_steps(next_batch: Callable, step: Callable, steps: int, warmup: int) -> list[float]:
    """Wall time of each step after ``warmup``: from the end of one step to the end of the next."""
    out, last = [], time.perf_counter()
    for i in range(warmup + steps):
        step(*next_batch())
        now = time.perf_counter()
        if i >= warmup:
            out.append(now - last)
        last = now
    return out


def endless(loader) -> Callable[[], tuple[Any, Any]]:
    """A function that returns the next (images, labels) of ``loader``, starting it again when it ends."""
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

    from medimg.models.backbones import backbone_info, build_backbone
    from medimg.models.freezing import apply_freeze, resolve_blocks

    c = compose(spec["overrides"])
    _, train_blocks, lr = first_phase(c)
    torch.manual_seed(0)
    d, pre = settings(c)[0].dataset, preprocess(c)  # the backbone's preprocessing filled in
    tf = seed_transform(int(pre.img_size), pre.mean, pre.std)
    ds = datasets.ImageFolder(str(Path(d.root) / "train"), transform=tf)
    loader = DataLoader(ds, batch_size=spec["batch"], shuffle=True, num_workers=spec.get("workers", 2))
    net = build_backbone(c["backbone"]["name"], len(ds.classes), weights=None)
    info = backbone_info(c["backbone"]["name"])
    apply_freeze(net, resolve_blocks(train_blocks, info.block_names), info.blocks, info.head)
    net.train()  # a plain loop: frozen blocks stay in train mode
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=lr)
    criterion = nn.CrossEntropyLoss()

    def step(x, y):
        loss = criterion(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return timed_steps(endless(loader), step, spec["steps"], spec["warmup"])


def medimg_step(model, precision: str) -> Callable:
    """Forward (autocast as Lightning's precision plugin does), loss, backward, optimiser step."""
    import torch

    opt = model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    bf16 = precision.startswith("bf16")

    def step(x, y):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = model.loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return step


def _medimg_parts(spec: dict[str, Any]):
    """(config, data module, model set up for the first phase) of ``spec``'s overrides."""
    c = compose(spec["overrides"])
    dm = data_module(c)
    return c, dm, first_phase_model(c, dm)


def run_plain(spec: dict[str, Any]) -> list[float]:
    import torch

    c, dm, model = _medimg_parts(spec)
    precision, deterministic = trainer_settings(c)
    if deterministic:
        torch.use_deterministic_algorithms(True)
    step = medimg_step(model, precision)
    return timed_steps(endless(dm.train_dataloader()), step, spec["steps"], spec["warmup"])


def run_ceiling(spec: dict[str, Any]) -> list[float]:
    import torch

    c, dm, model = _medimg_parts(spec)
    if spec.get("weights_channels_last"):
        model.net.to(memory_format=torch.channels_last)
    if spec.get("compile"):
        model.net = torch.compile(model.net)
    size = int(c["dataset"]["img_size"])
    g = torch.Generator().manual_seed(0)
    x = torch.randn(spec["batch"], 3, size, size, generator=g)
    y = torch.randint(0, dm.num_classes, (spec["batch"],), generator=g)
    step = medimg_step(model, trainer_settings(c)[0])
    t0 = time.perf_counter()
    step(x, y)  # first step apart: with torch.compile this is the compilation
    spec["first_step_s"] = time.perf_counter() - t0
    return timed_steps(lambda: (x, y), step, spec["steps"], max(0, spec["warmup"] - 1))


RUNNERS = {"baseline": run_baseline, "plain": run_plain, "ceiling": run_ceiling}


def run_one(spec: dict[str, Any]) -> None:
    """Run the configuration ``spec`` describes and print its ``RESULT`` line."""
    import torch

    if spec["kind"] == "loader":
        print("RESULT " + json.dumps({"ms_per_image": run_loader(spec)}), flush=True)
        return
    step_s = RUNNERS[spec["kind"]](spec)
    out = {
        "step_s": step_s,
        "threads": torch.get_num_threads(),
        "first_step_s": spec.get("first_step_s"),
        "children_max_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024,
    }
    print("RESULT " + json.dumps(out), flush=True)
