"""K-fold cross-validation results: mean and spread of every metric over the folds, and the fold ensemble.

The fold runs come from ``python -m medimg.train -m dataset.num_folds=K dataset.fold=0,...,K-1``: one run
folder per fold under a multirun folder, all sharing the same test split (folds only re-divide train+val).
The ensemble averages the folds' calibrated probabilities on that test split; its binary operating
threshold is the mean of the folds' thresholds.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from omegaconf import OmegaConf

from medimg.errors import MissingDataError
from medimg.evaluation.calibration import FoldEnsemble
from medimg.evaluation.predictions import split_predictions
from medimg.evaluation.report import HEADLINE, OPERATING, fmt

log = logging.getLogger(__name__)


def find_fold_runs(cv_dir: str | Path) -> list[Path]:
    """Run folders under ``cv_dir`` that finished (``checkpoints/best.ckpt`` and ``metrics.json``), by fold."""
    root = Path(cv_dir)
    if not root.is_dir():
        raise MissingDataError(f"cv_dir={cv_dir} is not a folder; give the multirun folder of the fold runs")
    runs = [d for d in root.iterdir()
            if d.is_dir() and (d / "checkpoints" / "best.ckpt").is_file() and (d / "metrics.json").is_file()]
    if not runs:
        raise MissingDataError(
            f"no finished fold runs (sub-folders with checkpoints/best.ckpt and metrics.json) in {root}; run "
            "`python -m medimg.train -m dataset.num_folds=5 dataset.fold=0,1,2,3,4` and pass its multirun folder")
    return sorted(runs, key=lambda d: (fold_of(d), d.name))


def fold_of(run_dir: Path) -> int:
    """The ``dataset.fold`` a run used (from its saved config), or its folder number."""
    saved = run_dir / ".hydra" / "config.yaml"
    if saved.is_file():
        fold = OmegaConf.load(saved).get("dataset", {}).get("fold")
        if fold is not None:
            return int(fold)
    return int(run_dir.name) if run_dir.name.isdigit() else 10**6


def aggregate(per_fold: Sequence[dict[str, float]]) -> tuple[dict[str, float], dict[str, float], dict[str, list]]:
    """Mean, sample standard deviation (ddof=1; 0 for one fold) and the fold values of every metric that all
    folds report."""
    keys = sorted(set.intersection(*(set(m) for m in per_fold))) if per_fold else []
    values = {k: [float(m[k]) for m in per_fold] for k in keys}
    mean = {k: float(np.mean(v)) for k, v in values.items()}
    std = {k: float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for k, v in values.items()}
    return mean, std, values


def read_fold_metrics(runs: Sequence[Path]) -> list[dict[str, float]]:
    return [json.loads((r / "metrics.json").read_text()) for r in runs]


def ensemble_probs(fold_probs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Average the folds' (uncalibrated, calibrated) probabilities."""
    raw = torch.stack([r for r, _ in fold_probs]).mean(0)
    cal = torch.stack([c for _, c in fold_probs]).mean(0)
    return raw, cal


def ensemble_table(table: pd.DataFrame, rows: torch.Tensor, targets: torch.Tensor, raw: torch.Tensor,
                   cal: torch.Tensor, ensemble: FoldEnsemble, class_names: Sequence[str]) -> pd.DataFrame:
    """The ensemble's ``predictions.csv`` rows: its calibrated probabilities, the folds' mean softmax as
    ``p_uncalibrated_<class>``."""
    return split_predictions(table, rows, targets, class_names, cal, ensemble.threshold, uncalibrated=raw)


def cv_report(path: Path, runs: Sequence[Path], mean: dict[str, float], std: dict[str, float],
              ensemble: dict[str, float], ensemble_dir: Path, figures: dict[str, Path], prefix: str = "test/") -> Path:
    """``report.md`` of a cross-validation: metric | mean ± std over folds | fold ensemble; ensemble figures."""
    lines = [f"# Cross-validation: {len(runs)} folds", ""]
    lines += [f"- fold {fold_of(r)}: `{r}`" for r in runs]
    lines += ["", f"Fold metrics are each fold's own test evaluation (`metrics.json`); the ensemble averages the "
              f"folds' calibrated probabilities on the shared test split (details in "
              f"[{ensemble_dir.name}/report.md]({ensemble_dir.name}/report.md)). ± is the sample standard "
              f"deviation over folds.", "", "## Metrics", "",
              "| metric | uncalibrated, mean ± std | calibrated, mean ± std | fold ensemble |", "|---|---:|---:|---:|"]

    def cell(key: str) -> str:
        return f"{fmt(mean[key])} ± {fmt(std[key])}" if key in mean else "–"

    for key, label in [*HEADLINE, *OPERATING]:
        raw, cal = prefix + key, prefix + key + "_calibrated"
        if raw not in mean and cal not in mean:
            continue
        ens = ensemble.get(cal, ensemble.get(raw))
        ens_txt = fmt(ens) if ens is not None and not math.isnan(ens) else "–"
        lines.append(f"| {label} | {cell(raw)} | {cell(cal)} | {ens_txt} |")
    if figures:
        lines += ["", "## Fold ensemble figures", ""]
        for name, p in figures.items():
            rel = Path(p).resolve().relative_to(path.parent.resolve()).as_posix()
            lines += [f"![{name}]({rel})", ""]
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
