"""Run folders: which data set a run was trained on, and where an evaluation of it writes its results."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from medimg.errors import DataError, MissingDataError


def dataset_of_run(run_dir: Path, paths_cfg: dict[str, Any] | Any) -> dict[str, Any]:
    """The ``dataset`` config a run was trained with (from ``<run>/.hydra/config.yaml``), resolved against the
    current ``paths`` (so a data folder given relative to ``paths.data_dir`` is found where data lives now)."""
    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise MissingDataError(
            f"{saved} does not exist, so the data set of run {run_dir} is unknown; pass dataset=<name> "
            "(and its overrides, e.g. dataset.root=...) to say what to evaluate on")
    run_cfg = OmegaConf.load(saved)
    if "dataset" not in run_cfg:
        raise DataError(f"{saved} has no dataset section; pass dataset=<name>")
    merged = OmegaConf.create({"paths": paths_cfg, "dataset": run_cfg.dataset})
    return OmegaConf.to_container(merged.dataset, resolve=True)


def evaluation_dir(run_dir: Path, dataset: str, split: str, run_id: str) -> Path:
    """``<run>/evaluations/<dataset>-<split>-<time>-<id>``: a re-evaluation never replaces the run's own results,
    nor another evaluation's: a second one of this process in the same second gets ``-2`` (``-3``, ...)."""
    base = Path(run_dir) / "evaluations" / f"{dataset}-{split}-{time.strftime('%Y%m%d-%H%M%S')}-{run_id}"
    path, k = base, 1
    while path.exists():
        k += 1
        path = base.with_name(f"{base.name}-{k}")
    return path
