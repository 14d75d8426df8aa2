"""The LightningModule on its own: NaN loss stops training clearly; frozen blocks stay in eval mode."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from medimg.errors import ConfigError
from medimg.models.classifier import NonFiniteLossError
from tests.conftest import make_classifier


def _loader(x: torch.Tensor, n_classes: int = 3) -> DataLoader:
    y = torch.arange(len(x)) % n_classes
    return DataLoader(TensorDataset(x, y, torch.arange(len(x))), batch_size=4)


def test_nan_loss_stops_with_a_clear_message():
    model = make_classifier(["a", "b", "c"], nan_check_every=1)
    model.set_phase("head", [], 1e-3, 1)
    x = torch.full((8, 3, 32, 32), float("nan"))
    trainer = L.Trainer(max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)
    with pytest.raises(NonFiniteLossError, match=r"NaN/inf in phase 'head'.*stage.phases.head.lr"):
        trainer.fit(model, train_dataloaders=_loader(x))


def test_frozen_blocks_stay_in_eval_mode_when_training():
    model = make_classifier(["a", "b"])
    model.set_phase("finetune", ["layer4"], 5e-4, 2)
    model.train()
    assert model.net.layer4.training and model.net.fc.training
    assert not model.net.layer3.training and not model.net.bn1.training
    opt = model.configure_optimizers()["optimizer"]
    n_opt = sum(p.numel() for g in opt.param_groups for p in g["params"])
    n_expected = sum(p.numel() for p in (*model.net.layer4.parameters(), *model.net.fc.parameters()))
    assert n_opt == n_expected and opt.param_groups[0]["lr"] == pytest.approx(5e-4)


def test_needs_two_classes():
    with pytest.raises(ConfigError, match="at least 2 classes"):
        make_classifier(["only"])
