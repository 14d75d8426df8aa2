"""Robustness under common corruptions: the split evaluated again under each corruption at each severity.

Each image is prepared as for evaluation (resize, center crop to the network's input size), corrupted there
as uint8 RGB (``corruptions``; so the corruption acts at the resolution the network sees, as
ImageNet-C corrupts its 224 px crops), then normalised. Probabilities go through the model's calibration and
decisions through its operating threshold, as in the main evaluation.

Summary numbers, for the chosen metric m (default ROC-AUC), with error e = 1 - m:

* ``corruption_error[c]``: mean over the severities of e under corruption c;
* ``mean_corruption_error``: mean over corruptions and severities of e (ImageNet-C's mCE normalises by a
  baseline network's errors; with no baseline this is the unnormalised mean);
* ``relative_corruption_error``: ``mean_corruption_error / e_clean``: 1 when the corruptions cost nothing, 2
  when they double the error (undefined when the clean error is 0);
* ``degradation``: mean over corruptions and severities of ``m_clean - m``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from medimg.data.workers import worker_context
from medimg.evaluation.calibration import Calibration
from medimg.evaluation.metrics import classification_metrics
from medimg.evaluation.predictions import collect_outputs
from medimg.evaluation.robustness.corruptions import check_corruptions, corrupt
from medimg.evaluation.robustness.report import write_robustness

log = logging.getLogger(__name__)

COLUMNS = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "nll", "ece")


def split_eval_transform(eval_tf: v2.Compose) -> tuple[v2.Compose, v2.Compose]:
    """The evaluation transform cut where the uint8 image becomes float: (geometry, normalisation)."""
    steps = list(eval_tf.transforms)
    cut = next((i for i, t in enumerate(steps) if isinstance(t, v2.ToDtype)), None)
    if cut is None:
        raise ValueError("the evaluation transform has no ToDtype step to corrupt the uint8 image before")
    return v2.Compose(steps[:cut]), v2.Compose(steps[cut:])


class CorruptedImages(Dataset):
    """``(image, class index, row index)`` of an evaluation dataset, each image corrupted on the way."""

    def __init__(self, base, eval_tf: v2.Compose, name: str, severity: int, seed: int):
        self.paths, self.targets, self.reader = base.paths, base.targets, base.reader
        self.geometry, self.normalise = split_eval_transform(eval_tf)
        self.name, self.severity, self.seed = name, severity, seed

    def __len__(self) -> int:
        return len(self.paths)

    def corrupted(self, i: int) -> np.ndarray:
        """The uint8 ``(H, W, 3)`` image ``i`` at the network's input size, corrupted."""
        img = torch.as_tensor(self.geometry(self.reader(self.paths[i]))).permute(1, 2, 0).contiguous().numpy()
        return img if self.severity == 0 else corrupt(img, self.name, self.severity, self.seed, i)

    def __getitem__(self, i: int):
        x = torch.from_numpy(np.array(self.corrupted(i), copy=True)).permute(2, 0, 1)  # a writable copy
        return self.normalise(x), self.targets[i], i


def corruption_metrics(trainer, model, dataset: Dataset, class_names: Sequence[str], calibration: Calibration,
                       batch_size: int, num_workers: int) -> dict[str, float]:
    """Metrics of ``model`` on ``dataset`` through ``calibration``, all ranks taking part."""
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                        multiprocessing_context=worker_context(num_workers))
    outputs = collect_outputs(trainer, model, loader, expected_rows=len(dataset))
    return classification_metrics(outputs.probs(calibration), outputs.targets, class_names,
                                  threshold=calibration.threshold)


def robustness_table(trainer, model, base, eval_tf: v2.Compose, class_names: Sequence[str],
                     calibration: Calibration, corruptions: Sequence[str], severities: Sequence[int], seed: int, batch_size: int,
                     num_workers: int) -> pd.DataFrame:
    """One row per (corruption, severity) plus the clean row (``corruption = none``, severity 0)."""
    check_corruptions(corruptions, severities)
    runs = [("none", 0)] + [(c, s) for c in corruptions for s in severities if s > 0]
    rows = []
    for name, severity in runs:
        ds = CorruptedImages(base, eval_tf, name, severity, seed)
        m = corruption_metrics(trainer, model, ds, class_names, calibration, batch_size, num_workers)
        rows.append({"corruption": name, "severity": severity, **{k: m.get(k, np.nan) for k in COLUMNS}})
        log.info("robustness: %s severity %d: %s", name, severity,
                 ", ".join(f"{k} {m[k]:.4f}" for k in COLUMNS if k in m))
    return pd.DataFrame(rows)


def corruption_summary(table: pd.DataFrame, metric: str) -> dict[str, Any]:
    """The module docstring's summary numbers for ``metric`` (a column of ``table``)."""
    if metric not in table.columns:
        raise ValueError(f"robustness metric {metric!r} is not one of {list(COLUMNS)}")
    clean = float(table.loc[table["corruption"] == "none", metric].iloc[0])
    corrupted = table[table["corruption"] != "none"]
    err = 1.0 - corrupted[metric].to_numpy(float)
    per = {c: float(1.0 - g[metric].mean()) for c, g in corrupted.groupby("corruption", sort=False)}
    mce = float(np.mean(err)) if len(err) else float("nan")
    clean_err = 1.0 - clean
    return {
        "metric": metric,
        "clean": clean,
        "corruption_error": per,
        "mean_corruption_error": mce,
        "relative_corruption_error": mce / clean_err if clean_err > 0 else None,
        "degradation": float(np.mean(clean - corrupted[metric].to_numpy(float))) if len(err) else float("nan"),
        "definition": f"error = 1 - {metric}; mean_corruption_error = mean over corruptions and severities of the "
                      f"error; relative_corruption_error = mean_corruption_error / clean error",
    }


def evaluate_robustness(trainer, model, dm, calibration: Calibration, out_dir: str | Path, corruptions: Sequence[str],
                        severities: Sequence[int], seed: int, metric: str, split: str, batch_size: int,
                        num_workers: int) -> dict[str, Any]:
    """Evaluate ``split`` of ``dm`` under every corruption and severity (all ranks take part); rank 0 writes
    ``<out_dir>/robustness.csv``, ``robustness.json`` (the summary), ``figures/robustness.png``,
    ``figures/corruption_examples.png`` and ``report.md``. Returns the summary."""
    base = dm.datasets[split]
    table = robustness_table(trainer, model, base, dm.eval_tf, model.class_names, calibration, corruptions, severities, seed,
                             batch_size, num_workers)
    summary = corruption_summary(table, metric)
    summary.update(split=split, images=len(base.paths), seed=int(seed), severities=list(severities))
    if trainer.is_global_zero:
        def image_at(name: str, severity: int) -> np.ndarray:
            return CorruptedImages(base, dm.eval_tf, name, severity, seed).corrupted(0)

        write_robustness(Path(out_dir), table, summary, image_at, corruptions, severities)
    return summary
