"""The bare train step: what the device computes when nothing else runs (the ceiling for medimg's training rate).

A torchvision ResNet and Adam on one batch of random tensors already on the device (channels_last), bf16
autocast, forward + cross-entropy + backward + optimiser step, timed over ``steps`` steps after ``warmup``
(synchronised before reading the clock). ``full`` trains every layer; ``head`` trains the last layer only, the
backbone frozen in eval mode (BatchNorm statistics kept), as medimg's head phase on images does. Options:
``compile`` (torch.compile the network; the first step, its compilation, is reported apart) and
``cudnn_benchmark``. Prints one ``RESULT {json}`` line per configuration.

    python benchmarks/gpu/bare_step.py '{"configs": [{"model": "resnet18", "stage": "full"}], "batch": 256}'
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F
import torchvision

NUM_CLASSES = 7


def build(model: str, stage: str, device: torch.device) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """The network (train mode; a frozen backbone in eval mode for ``head``) and Adam over what trains."""
    net = getattr(torchvision.models, model)(num_classes=NUM_CLASSES).to(device, memory_format=torch.channels_last)
    net.train()
    if stage == "head":
        for name, child in net.named_children():
            if name != "fc":
                child.eval()
                child.requires_grad_(False)
    params = [p for p in net.parameters() if p.requires_grad]
    return net, torch.optim.Adam(params, lr=1e-3, weight_decay=1e-4)


def train_step(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               dtype: torch.dtype | None) -> None:
    """One optimisation step: autocast forward (``dtype`` None = fp32), loss in fp32, backward, Adam."""
    with torch.autocast(x.device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
        loss = F.cross_entropy(net(x).float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(cfg: dict[str, Any], batch: int, img_size: int, steps: int, warmup: int,
            device: torch.device) -> dict[str, Any]:
    """Images per second of one configuration (and its first step and peak memory)."""
    torch.backends.cudnn.benchmark = bool(cfg.get("cudnn_benchmark", False))
    torch.manual_seed(0)
    net, opt = build(cfg["model"], cfg["stage"], device)
    if cfg.get("compile"):
        net = torch.compile(net)
    x = torch.randn(batch, 3, img_size, img_size, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, NUM_CLASSES, (batch,), device=device)
    dtype = torch.bfloat16 if cfg.get("precision", "bf16") == "bf16" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    train_step(net, opt, x, y, dtype)
    _sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(max(0, warmup - 1)):
        train_step(net, opt, x, y, dtype)
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        train_step(net, opt, x, y, dtype)
    _sync(device)
    elapsed = time.perf_counter() - t0
    out = {**cfg, "batch": batch, "img_size": img_size, "steps": steps, "warmup": warmup,
           "images_per_s": batch * steps / elapsed, "step_ms": 1000 * elapsed / steps, "first_step_s": first_s}
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def main(spec: dict[str, Any]) -> None:
    device = torch.device(spec.get("device") or ("cuda" if torch.cuda.is_available() else "cpu"))
    for cfg in spec["configs"]:
        try:
            row = measure(cfg, int(spec.get("batch", 256)), int(spec.get("img_size", 224)),
                          int(spec.get("steps", 30)), int(spec.get("warmup", 5)), device)
        except Exception as e:  # one failing configuration (out of memory, a compile error) must not stop the rest
            row = {**cfg, "error": f"{type(e).__name__}: {e}"}
        print("RESULT " + json.dumps(row), flush=True)
        if device.type == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
