"""The LightningModule: a backbone with a new head, the loss, the optimiser of the current phase.

It holds the training step and the per-epoch metrics, nothing about data loading or plotting.
A phase (see ``set_phase``) decides which blocks train and at which learning rate; frozen blocks
keep their BatchNorm statistics (they stay in eval mode while the rest trains).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from medimg.models.backbones import HEAD, blocks_of, build_backbone
from medimg.models.freezing import apply_freeze, resolve_blocks


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _metrics(num_classes: int, prefix: str, validate_args: bool = True) -> MetricCollection:
    """``validate_args=False`` for the training metrics: their input checks read values back from the
    device (a host sync) on every update, and the inputs are the model's own softmax and the loader's labels."""
    kw = {"validate_args": validate_args}
    return MetricCollection(
        {
            "accuracy": MulticlassAccuracy(num_classes, average="micro", **kw),
            "auroc": MulticlassAUROC(num_classes, average="macro", **kw),
            "f1_macro": MulticlassF1Score(num_classes, average="macro", **kw),
        },
        prefix=prefix,
    )


class ImageClassifier(L.LightningModule):
    def __init__(
        self,
        backbone: str,
        class_names: Sequence[str],
        weights: str | None = None,
        dropout: float = 0.2,
        class_weights: Sequence[float] | None = None,
        optimizer: str = "adam",
        weight_decay: float = 1e-4,
        momentum: float = 0.9,
        scheduler: str = "cosine",
        step_size: int = 5,
        gamma: float = 0.1,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        nan_check_every: int = 20,
        step_loss_in_bar: bool = True,
        preprocess: dict[str, Any] | None = None,  # eval img_size/resize/mean/std, kept for predict and export
    ):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if self.num_classes < 2:
            raise ValueError(f"need at least 2 classes, got {self.class_names}")
        self.net = build_backbone(backbone, self.num_classes, weights=weights, dropout=dropout)
        self.blocks = blocks_of(backbone)
        cw = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weight", cw, persistent=False)
        self.train_metrics = _metrics(self.num_classes, "train/", validate_args=False)
        self.val_metrics = _metrics(self.num_classes, "val/")
        self.test_metrics = _metrics(self.num_classes, "test/")
        self.val_loss, self.test_loss = MeanMetric(), MeanMetric()
        self.register_buffer("_nonfinite", torch.zeros((), dtype=torch.bool), persistent=False)
        # the current phase; set by set_phase before each fit
        self.phase: dict[str, Any] = {"name": "full", "train_blocks": list(self.blocks), "lr": 1e-3, "epochs": 1}
        self.phases_done: dict[str, dict[str, Any]] = {}
        self.calibration: dict[str, Any] | None = None  # fitted on validation after training (see evaluation)
        self._frozen: list[torch.nn.Module] = []
        self.set_phase("full", "all", 1e-3, 1)

    # ------------------------------------------------------------------ phases
    def set_phase(self, name: str, train_blocks, lr: float, epochs: int) -> None:
        """Freeze everything but ``train_blocks`` and the head; the next optimiser uses ``lr``."""
        blocks = resolve_blocks(train_blocks, self.blocks)
        self._frozen = apply_freeze(self.net, blocks, self.blocks, HEAD)
        self.phase = {"name": name, "train_blocks": blocks, "lr": float(lr), "epochs": int(epochs)}
        self.train(self.training)

    def train(self, mode: bool = True):
        super().train(mode)
        if mode:
            for m in self._frozen:  # frozen blocks keep BatchNorm running statistics and dropout off
                m.eval()
        return self

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ forward / steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images (NxCxHxW) through the whole network; backbone features (NxD, a feature-cached phase,
        see data/features.py) through the head only."""
        return getattr(self.net, HEAD)(x) if x.ndim == 2 else self(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), y, weight=self.class_weight,
                               label_smoothing=self.hparams.label_smoothing)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self._logits(x)
        loss = self._loss(logits, y)
        self._nonfinite |= ~torch.isfinite(loss.detach())
        if (batch_idx + 1) % self.hparams.nan_check_every == 0:
            self._check_finite(batch_idx)
        self.train_metrics.update(logits.detach().float().softmax(-1), y)
        # in the progress bar, the per-step loss is read back from the device after every step (a host sync)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=self.hparams.step_loss_in_bar,
                 batch_size=len(y))
        return loss

    def _check_finite(self, batch_idx: int) -> None:
        if bool(self._nonfinite):
            raise NonFiniteLossError(
                f"training loss became NaN/inf in phase {self.phase['name']!r} (epoch {self.current_epoch}, "
                f"batch {batch_idx}). Lower the learning rate (stage.phases.{self.phase['name']}.lr), "
                "try trainer.precision=32, or check the data for broken images."
            )

    def on_train_epoch_end(self) -> None:
        self._check_finite(-1)
        self.log_dict(self.train_metrics.compute(), sync_dist=False)
        self.train_metrics.reset()

    def _eval_step(self, batch, metrics: MetricCollection, loss_metric: MeanMetric) -> torch.Tensor:
        x, y = batch[0], batch[1]
        logits = self._logits(x).float()
        loss_metric.update(self._loss(logits, y), weight=len(y))
        metrics.update(logits.softmax(-1), y)
        return logits

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.val_metrics, self.val_loss)

    def on_validation_epoch_end(self) -> None:
        out = self.val_metrics.compute()
        out["val/loss"] = self.val_loss.compute()
        self.log_dict(out, prog_bar=True)
        self.val_metrics.reset()
        self.val_loss.reset()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch, self.test_metrics, self.test_loss)

    def on_test_epoch_end(self) -> None:
        out = self.test_metrics.compute()
        out["test/loss"] = self.test_loss.compute()
        self.log_dict(out)
        self.test_metrics.reset()
        self.test_loss.reset()

    def predict_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self(batch[0]).float().softmax(-1)

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp, params, lr = self.hparams, self.trainable_parameters(), self.phase["lr"]
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(params, lr=lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(params, lr=lr, weight_decay=hp.weight_decay)
        elif hp.optimizer == "sgd":
            opt = torch.optim.SGD(params, lr=lr, momentum=hp.momentum, weight_decay=hp.weight_decay, nesterov=True)
        else:
            raise ValueError(f"unknown model.optimizer={hp.optimizer!r}; choose adam, adamw or sgd")
        epochs = max(1, self.phase["epochs"])
        if hp.scheduler == "cosine":
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs)
        elif hp.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=hp.step_size, gamma=hp.gamma)
        elif hp.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="min", factor=hp.gamma, patience=1)
            return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": "val/loss"}}
        elif hp.scheduler in ("none", None):
            return opt
        else:
            raise ValueError(f"unknown model.scheduler={hp.scheduler!r}; choose cosine, step, plateau or none")
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["medimg"] = {
            "phase": dict(self.phase),
            "phases_done": {k: dict(v) for k, v in self.phases_done.items()},
            "class_names": list(self.class_names),
            "calibration": self.calibration,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("medimg") or {}
        self.calibration = state.get("calibration")
        self.phases_done = state.get("phases_done", {})
