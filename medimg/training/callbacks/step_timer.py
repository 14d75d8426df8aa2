"""Training throughput of a real run: per-step wall times after a warm-up, written to ``throughput.json``.

Enabled with ``callbacks.throughput=true``. A step's time runs from the end of one training batch to the end
of the next, so it holds everything the loop does per step: waiting for the data loader, forward, backward,
optimiser step, logging and the other callbacks. The first ``warmup`` steps (kernel selection, loader
workers filling their queues) are left out. Each phase of a stage gets its own entry in the file:

    {"<phase>": {"images_per_s": ..., "steps_per_s": ..., "step_s": [...], ...}}

The warm-up steps' times are kept apart (``warmup_step_s``). ``fit_s`` is the whole fit's wall time (loader
start-up, feature extraction of a feature-cached phase and validation included) and ``images_per_s_fit`` all
images trained over it: the figure of a phase whose steps are not all alike.
``images_per_s`` is the batch size over the median step time; ``images_per_s_mean`` is all timed images
over all timed seconds. ``max_rss_mib`` is the training process's peak resident memory (without loader
workers, which are separate processes).
"""

from __future__ import annotations

import json
import resource
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from medimg.files import write_json


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, list | tuple) else batch
    return int(len(first))


def max_rss_mib() -> float:
    """Peak resident memory of this process in MiB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def summarise(step_s: list[float], sizes: list[int], warmup: int) -> dict[str, Any]:
    """Median-based rates of the steps after the first ``warmup`` (seconds per step, images per step)."""
    timed, timed_sizes = step_s[warmup:], sizes[warmup:]
    out: dict[str, Any] = {
        "warmup": warmup,
        "warmup_step_s": [round(t, 5) for t in step_s[:warmup]],
        "steps_timed": len(timed),
        "step_s": [round(t, 5) for t in timed],
    }
    if not timed:
        return out
    med = statistics.median(timed)
    batch = statistics.median(timed_sizes)
    out.update(
        batch_size=batch,
        median_step_s=med,
        steps_per_s=1.0 / med,
        images_per_s=batch / med,
        images_per_s_mean=sum(timed_sizes) / sum(timed),
    )
    return out


class StepTimer(Callback):
    def __init__(self, path: str | Path, warmup: int = 3):
        if int(warmup) < 0:
            raise ValueError(f"StepTimer warmup must be >= 0, got {warmup}")
        self.path, self.warmup = Path(path), int(warmup)
        self._reset()

    def _reset(self) -> None:
        self.step_s: list[float] = []
        self.sizes: list[int] = []
        self._last: float | None = None
        self._fit_start: float | None = None

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._fit_start = time.perf_counter()

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = time.perf_counter()  # the first step includes fetching the first batch

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs, batch: Any, batch_idx: int
    ) -> None:
        now = time.perf_counter()
        if self._last is not None:
            self.step_s.append(now - self._last)
            self.sizes.append(_batch_size(batch))
        self._last = now

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._last = time.perf_counter()  # validation time is not a training step

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        phase = getattr(pl_module, "phase", {}).get("name", "fit")
        entry = summarise(self.step_s, self.sizes, self.warmup)
        entry.update(precision=str(trainer.precision), max_rss_mib=round(max_rss_mib(), 1),
                     epochs=trainer.current_epoch, images_trained=sum(self.sizes))
        if self._fit_start is not None:
            fit_s = time.perf_counter() - self._fit_start
            entry.update(fit_s=round(fit_s, 3), images_per_s_fit=sum(self.sizes) / fit_s)
        extract_s = getattr(trainer.datamodule, "extract_s", None)
        if extract_s:
            entry["feature_extract_s"] = {k: round(v, 3) for k, v in extract_s.items()}
        data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        data[phase] = entry
        write_json(self.path, data)
        self._reset()
