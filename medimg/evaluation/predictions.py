"""Logits of a whole split, collected with ``trainer.predict`` and gathered across DDP ranks.

Under DDP Lightning's predict loop gives each rank a disjoint share of the split
(``UnrepeatedDistributedSampler``: no padding duplicates). Every rank then receives every rank's share
(``all_gather_object``), rows are de-duplicated by their row index and put back in the split table's order,
so all ranks hold exactly the single-process result: each image once, metrics computed over the whole split.

``predictions_frame`` is the one layout of every ``predictions.csv`` (predict's and evaluate's alike);
``write_predictions`` writes it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
import torch.distributed as dist

from medimg.data.table import metadata_columns
from medimg.evaluation.calibration import Calibration, Uncalibrated
from medimg.evaluation.metrics import predict_labels
from medimg.evaluation.tta import apply_view
from medimg.files import write_csv

log = logging.getLogger(__name__)


@dataclass
class SplitOutputs:
    """Logits ``(V, N, C)`` for V views (V = 1 without TTA), targets ``(N,)`` and split-table rows ``(N,)``."""

    logits: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor

    def probs(self, calibration: Calibration | None = None) -> torch.Tensor:
        """Class probabilities under ``calibration`` (None = softmax), averaged over the views."""
        cal = calibration or Uncalibrated()
        return torch.stack([cal.probs(z) for z in self.logits.double()]).mean(0)

    def mean_logits(self) -> torch.Tensor:
        """Logits whose softmax is the view-averaged softmax (the logits themselves without TTA)."""
        if len(self.logits) == 1:
            return self.logits[0]
        return self.probs(None).clamp_min(1e-300).log().to(self.logits.dtype)


class _ViewPredictor(L.LightningModule):
    """Runs a classifier over every view of each batch; returns logits, targets and row indices."""

    def __init__(self, model: L.LightningModule, views: Sequence[str]):
        super().__init__()
        self.model = model
        self.views = list(views)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def predict_step(self, batch, batch_idx: int, dataloader_idx: int = 0) -> dict[str, torch.Tensor]:
        x, y, rows = batch[0], batch[1], batch[2]
        logits = torch.stack([self.model(apply_view(x, v)).float() for v in self.views])
        return {"logits": logits.cpu(), "targets": y.cpu(), "rows": rows.cpu()}


def collect_outputs(trainer: L.Trainer, model: L.LightningModule, loader, views: Sequence[str] = ("identity",),
                    expected_rows: int | None = None) -> SplitOutputs:
    """Predict ``loader`` with ``model`` on every rank; every rank returns the whole split, in row order."""
    was_training = model.training
    batches = trainer.predict(_ViewPredictor(model, views), dataloaders=loader, return_predictions=True) or []
    model.train(was_training)
    if batches:
        local = {k: torch.cat([b[k] for b in batches], dim=1 if k == "logits" else 0) for k in batches[0]}
    else:
        local = None
    parts = [local]
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        parts = [None] * dist.get_world_size()
        dist.all_gather_object(parts, local)
    parts = [p for p in parts if p is not None]
    if not parts:
        raise RuntimeError("the prediction loop returned no batches; is the split empty?")
    rows = torch.cat([p["rows"] for p in parts])
    logits = torch.cat([p["logits"] for p in parts], dim=1)
    targets = torch.cat([p["targets"] for p in parts])
    order = torch.argsort(rows, stable=True)
    rows, logits, targets = rows[order], logits[:, order], targets[order]
    keep = torch.ones(len(rows), dtype=torch.bool)
    keep[1:] = rows[1:] != rows[:-1]  # a row seen twice (padding by a DistributedSampler) counts once
    out = SplitOutputs(logits=logits[:, keep], targets=targets[keep], rows=rows[keep])
    if expected_rows is not None and len(out.rows) != expected_rows:
        log.warning("evaluated %d of the split's %d images (limit_predict_batches / fast_dev_run?); "
                    "metrics cover only those", len(out.rows), expected_rows)
    return out


def predictions_table(outputs: SplitOutputs, split_table: pd.DataFrame, class_names: Sequence[str],
                      calibration: Calibration, sets: torch.Tensor | None = None,
                      referred: torch.Tensor | None = None) -> pd.DataFrame:
    """The ``predictions_frame`` of a split's ``outputs`` under ``calibration`` (evaluate, a run's test split),
    with the conformal prediction ``sets`` and the ``referred`` images when there are any."""
    final = outputs.probs(calibration)
    return split_predictions(split_table, outputs.rows, outputs.targets, class_names, final,
                             calibration.threshold, outputs.probs(None) if calibration.is_calibrated else None, sets,
                             referred)


def split_predictions(split_table: pd.DataFrame, rows: torch.Tensor, targets: torch.Tensor,
                      class_names: Sequence[str], final: torch.Tensor, threshold: float | None,
                      uncalibrated: torch.Tensor | None = None, sets: torch.Tensor | None = None,
                      referred: torch.Tensor | None = None) -> pd.DataFrame:
    """The ``predictions_frame`` of rows ``rows`` of a split table: their paths, labels and metadata; the
    decisions from the ``final`` probabilities (binary: at ``threshold``)."""
    rows = rows.numpy()
    return predictions_frame(split_table["path"].to_numpy()[rows], class_names, final,
                             predict_labels(final, threshold), labels=targets, uncalibrated=uncalibrated,
                             meta=split_table[metadata_columns(split_table)].iloc[rows], sets=sets, refer=referred)


def set_column(sets, probs: np.ndarray, names: Sequence[str]) -> list[str]:
    """Each image's prediction set as class names joined by ``|``, the most probable first."""
    sets = np.asarray(sets, dtype=bool).reshape(probs.shape)
    return ["|".join(names[k] for k in np.argsort(-p, kind="stable") if s[k]) for p, s in zip(probs, sets)]


def predictions_frame(paths: Sequence[Any], class_names: Sequence[str], probs, decisions, labels=None,
                      uncalibrated=None, meta: pd.DataFrame | None = None, sets=None, refer=None) -> pd.DataFrame:
    """The one layout of ``predictions.csv`` (predict, evaluate, a run's test split, the CV ensemble), a row
    per image::

        path, [label], prediction, probability, [prediction_set], [refer], [metadata columns], p_<class>...,
        [p_uncalibrated_<class>...]

    ``prediction_set`` (with a conformal rule, ``sets`` ``(N, C)`` booleans): the classes the set holds at its
    coverage, ``|``-separated, the most probable first. ``refer`` (with a referral rule, ``refer`` ``(N,)``
    booleans): True for an image whose ``probability`` is below the rule's threshold, for a clinician to read.

    ``prediction`` is the final decision (``decisions``: class indices from the calibrated probabilities and,
    for binary models, the operating threshold), ``probability`` the final probability of that class,
    ``p_<class>`` the final probabilities ``probs`` ``(N, C)`` (calibrated when there is a calibration, else
    the softmax). ``label`` (the true class, from the class indices ``labels``) only when the truth is known;
    ``p_uncalibrated_<class>`` (the plain softmax) only when the probabilities were calibrated and the caller
    has the softmax. Metadata columns (e.g. HAM10000's ``age``, ``sex``) keep their names, or become
    ``meta_<name>`` where a name is one of the columns above. Arrays may be numpy arrays or CPU tensors;
    ``write_predictions`` writes the frame."""
    names = [str(c) for c in class_names]
    probs = np.asarray(probs, dtype=np.float64).reshape(-1, len(names))
    decisions = np.asarray(decisions, dtype=np.int64).reshape(-1)
    columns: dict[str, Any] = {"path": [str(p) for p in paths]}
    if labels is not None:
        columns["label"] = [names[int(t)] for t in labels]
    columns["prediction"] = [names[d] for d in decisions]
    columns["probability"] = probs[np.arange(len(probs)), decisions]
    if sets is not None:
        columns["prediction_set"] = set_column(sets, probs, names)
    if refer is not None:
        columns["refer"] = np.asarray(refer, dtype=bool).reshape(len(probs))
    probabilities = {f"p_{c}": probs[:, k] for k, c in enumerate(names)}
    if uncalibrated is not None:
        raw = np.asarray(uncalibrated, dtype=np.float64).reshape(-1, len(names))
        probabilities.update({f"p_uncalibrated_{c}": raw[:, k] for k, c in enumerate(names)})
    if meta is not None:
        taken = set(columns) | set(probabilities)
        columns.update({f"meta_{c}" if c in taken else c: meta[c].to_numpy() for c in meta.columns})
    return pd.DataFrame({**columns, **probabilities})


def write_predictions(path: str | Path, frame: pd.DataFrame) -> Path:
    """``predictions.csv`` from a ``predictions_frame``: every float column to 8 significant digits (a probability
    of 1e-9 stays 1e-09, so the NLL recomputed from the file is the evaluation's)."""
    out = frame.copy()
    floats = out.select_dtypes("float").columns
    out[floats] = out[floats].map(lambda v: f"{v:.8g}")
    return write_csv(path, out)
