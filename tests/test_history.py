"""The training history callback: one record per epoch of every phase in history.json, written atomically,
a re-run epoch replaced, not repeated; the learning-curve figure from it, with the phase boundaries marked."""

from __future__ import annotations

import json

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medimg.evaluation.learning_curves import learning_curves_figure, learning_curves_from, phase_starts
from medimg.evaluation.plots import close_figures
from medimg.training.callbacks.history import TrainingHistory, merge_record


class _Tiny(L.LightningModule):
    """Logs like ImageClassifier: train/loss per step and epoch, val/loss and val/auroc per epoch."""

    def __init__(self, lr: float):
        super().__init__()
        self.net = nn.Linear(4, 2)
        self.lr = lr
        self.val_losses: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.val_losses.append(nn.functional.cross_entropy(self.net(x), y))

    def on_validation_epoch_end(self):
        loss = torch.stack(self.val_losses).mean()
        self.val_losses.clear()
        self.log_dict({"val/loss": loss, "val/auroc": 1.0 / (1.0 + loss)})

    def configure_optimizers(self):
        opt = torch.optim.SGD(self.parameters(), lr=self.lr)
        return [opt], [torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)]


def _loaders():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = (x[:, 0] > 0).long()
    ds = TensorDataset(x, y)
    return DataLoader(ds, batch_size=16, shuffle=True, generator=g), DataLoader(ds, batch_size=32)


def _fit(model, path, phase, epochs, check_val_every_n_epoch=1):
    train, val = _loaders()
    trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=2,
                        check_val_every_n_epoch=check_val_every_n_epoch,
                        callbacks=[TrainingHistory(path, phase, "val/auroc")])
    trainer.fit(model, train, val)
    return trainer


def test_records_every_epoch_of_every_phase(tmp_path):
    path = tmp_path / "history.json"
    model = _Tiny(lr=0.1)
    _fit(model, path, "head", 3)
    model.lr = 0.02
    _fit(model, path, "finetune", 2)
    data = json.loads(path.read_text())
    records = data["epochs"]
    assert data["monitor"] == "val/auroc"
    assert [(r["phase"], r["epoch"]) for r in records] == [("head", 0), ("head", 1), ("head", 2),
                                                           ("finetune", 0), ("finetune", 1)]
    assert [r["global_step"] for r in records] == [4, 8, 12, 4, 8]  # 4 batches per epoch, per phase trainer
    assert [r["lr"] for r in records] == pytest.approx([0.1, 0.05, 0.025, 0.02, 0.01])  # the lr the epoch used
    for r in records:
        assert r["train/loss"] > 0 and r["val/loss"] > 0
        assert r["val/auroc"] == pytest.approx(1 / (1 + r["val/loss"]))
    assert records[-1]["val/loss"] < records[0]["val/loss"]  # it learns
    assert not list(tmp_path.glob(".history.json*"))  # written atomically: no temporary file left


def test_epochs_without_validation_have_no_stale_values(tmp_path):
    path = tmp_path / "history.json"
    _fit(_Tiny(lr=0.1), path, "full", 4, check_val_every_n_epoch=2)
    records = json.loads(path.read_text())["epochs"]
    assert [r["val/loss"] is None for r in records] == [True, False, True, False]
    assert all(r["train/loss"] is not None for r in records)


def test_a_rerun_epoch_replaces_its_record():
    records = [{"phase": "head", "epoch": e, "x": e} for e in range(3)] + [{"phase": "finetune", "epoch": 0, "x": 9}]
    merged = merge_record(records, {"phase": "head", "epoch": 1, "x": 42})
    assert [(r["phase"], r["epoch"], r["x"]) for r in merged] == [("head", 0, 0), ("head", 1, 42), ("head", 2, 2),
                                                                  ("finetune", 0, 9)]


def test_learning_curves_mark_the_phases(tmp_path):
    path = tmp_path / "history.json"
    model = _Tiny(lr=0.1)
    _fit(model, path, "head", 2)
    _fit(model, path, "finetune", 2)
    fig = learning_curves_from(path)
    loss_ax, metric_ax = fig.axes[:2]
    assert [line.get_label() for line in loss_ax.get_lines()[:2]] == ["train loss", "validation loss"]
    assert metric_ax.get_lines()[0].get_label() == "val/auroc"
    assert {t.get_text() for t in loss_ax.texts} == {"head", "finetune"}
    assert phase_starts(json.loads(path.read_text())["epochs"]) == [(1, "head"), (3, "finetune")]
    close_figures({"f": fig})
    assert learning_curves_from(tmp_path / "none.json") is None
    close_figures({"f": learning_curves_figure([{"phase": "full", "epoch": 0, "train/loss": 1.0, "val/loss": None}])})
