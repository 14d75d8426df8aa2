"""Logits of a whole split, collected with ``trainer.predict`` and gathered across DDP ranks.

Under DDP Lightning's predict loop gives each rank a disjoint share of the split
(``UnrepeatedDistributedSampler``: no padding duplicates). Every rank then receives every rank's share
(``all_gather_object``), rows are de-duplicated by their row index and put back in the split table's order,
so all ranks hold exactly the single-process result: each image once, metrics computed over the whole split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import lightning as L
import pandas as pd
import torch
import torch.distributed as dist

from medimg.data.table import metadata_columns
from medimg.evaluation.calibration import calibrated_probs, is_calibrated
from medimg.evaluation.metrics import predict_labels
from medimg.evaluation.tta import apply_view

log = logging.getLogger(__name__)


@dataclass
class SplitOutputs:
    """Logits ``(V, N, C)`` for V views (V = 1 without TTA), targets ``(N,)`` and split-table rows ``(N,)``."""

    logits: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor

    def probs(self, state: dict[str, Any] | None = None) -> torch.Tensor:
        """Class probabilities under the calibration ``state`` (None = softmax), averaged over the views."""
        return torch.stack([calibrated_probs(z, state) for z in self.logits.double()]).mean(0)

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
                      calibration: dict[str, Any] | None) -> pd.DataFrame:
    """One row per image: ``path``, ``label``, ``pred`` (the final decision: calibrated probabilities and, for
    binary tasks, the operating threshold), the data table's metadata columns (e.g. HAM10000's ``age``, ``sex``),
    ``prob_<class>`` and, with a calibration, ``prob_calibrated_<class>``."""
    final = outputs.probs(calibration)
    calibrated = is_calibrated(calibration)
    rows = outputs.rows.numpy()
    df = probability_table(split_table["path"].to_numpy()[rows], outputs.targets,
                           predict_labels(final, (calibration or {}).get("threshold")), outputs.probs(None),
                           final if calibrated else None, class_names)
    meta = split_table[metadata_columns(split_table)].iloc[rows].reset_index(drop=True)
    meta = meta.rename(columns={c: f"meta_{c}" for c in meta.columns if c in df.columns})  # no name twice
    return pd.concat([df[["path", "label", "pred"]], meta, df.drop(columns=["path", "label", "pred"])], axis=1)


def probability_table(paths: Sequence[str], targets: torch.Tensor, preds: torch.Tensor, raw: torch.Tensor,
                      calibrated: torch.Tensor | None, class_names: Sequence[str]) -> pd.DataFrame:
    df = pd.DataFrame({
        "path": list(paths),
        "label": [class_names[int(t)] for t in targets],
        "pred": [class_names[int(p)] for p in preds],
    })
    for k, name in enumerate(class_names):
        df[f"prob_{name}"] = raw[:, k].numpy()
    if calibrated is not None:
        for k, name in enumerate(class_names):
            df[f"prob_calibrated_{name}"] = calibrated[:, k].numpy()
    return df
