"""Run folders: where a checkpoint's run lives, which data set it was trained on, whether classes agree."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf


class ClassMismatchError(ValueError):
    """A checkpoint and a data set (or two checkpoints) with different classes."""


def run_dir_of(ckpt_path: str | Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``; a checkpoint elsewhere -> its folder."""
    p = Path(ckpt_path).resolve()
    return p.parents[1] if p.parent.name == "checkpoints" else p.parent


def dataset_of_run(run_dir: Path, paths_cfg: dict[str, Any] | Any) -> dict[str, Any]:
    """The ``dataset`` config a run was trained with (from ``<run>/.hydra/config.yaml``), resolved against the
    current ``paths`` (so a data folder given relative to ``paths.data_dir`` is found where data lives now)."""
    saved = Path(run_dir) / ".hydra" / "config.yaml"
    if not saved.is_file():
        raise FileNotFoundError(
            f"{saved} does not exist, so the data set of run {run_dir} is unknown; pass dataset=<name> "
            "(and its overrides, e.g. dataset.root=...) to say what to evaluate on")
    run_cfg = OmegaConf.load(saved)
    if "dataset" not in run_cfg:
        raise ValueError(f"{saved} has no dataset section; pass dataset=<name>")
    merged = OmegaConf.create({"paths": paths_cfg, "dataset": run_cfg.dataset})
    return OmegaConf.to_container(merged.dataset, resolve=True)


def check_classes(model_classes: Sequence[str], data_classes: Sequence[str], ckpt: str | Path, dataset: str) -> None:
    if list(model_classes) != list(data_classes):
        same_set = sorted(model_classes) == sorted(data_classes)
        hint = (" (the same classes in another order)" if same_set else "")
        raise ClassMismatchError(
            f"checkpoint {ckpt} was trained on classes {list(model_classes)} but dataset {dataset} has classes "
            f"{list(data_classes)}{hint}; evaluate on a data set with the checkpoint's classes in the same order")
