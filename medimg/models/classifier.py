"""The LightningModule: a backbone with a new head, the loss, the optimiser of the current phase.

It only learns: the training and validation steps, their metrics, and which blocks train at which learning
rate (``set_phase``). Frozen blocks keep their BatchNorm statistics (they stay in eval mode while the rest
trains). Which phases are done, calibration, and what goes into a checkpoint besides the weights belong to
``medimg.training`` and ``medimg.inference``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning as L
import torch
from torchmetrics import MeanMetric, MetricCollection
from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

from medimg.errors import ConfigError
from medimg.models.backbones import backbone_info, build_backbone
from medimg.models.freezing import apply_freeze, resolve_blocks
from medimg.models.losses import classification_loss, distillation_loss
from medimg.models.mixing import build_mixer
from medimg.models.optim import build_optimizer, build_schedule
from medimg.names import MODEL_METRICS, same_names


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite."""


def _metrics(num_classes: int, prefix: str, validate_args: bool = True) -> MetricCollection:
    """``validate_args=False`` for the training metrics: their input checks read values back from the
    device (a host sync) on every update, and the inputs are the model's own softmax and the loader's labels."""
    kw = {"validate_args": validate_args}
    metrics = {
        "accuracy": MulticlassAccuracy(num_classes, average="micro", **kw),
        "auroc": MulticlassAUROC(num_classes, average="macro", **kw),
        "f1_macro": MulticlassF1Score(num_classes, average="macro", **kw),
    }
    same_names(metrics, MODEL_METRICS, "the model's metrics")
    return MetricCollection(metrics, prefix=prefix)


class ImageClassifier(L.LightningModule):
    """Every argument is stored as a hyper-parameter in the checkpoint, so the model can be rebuilt from it."""

    def __init__(self, *, backbone: str, class_names: Sequence[str], weights: str | None, dropout: float,
                 class_weights: Sequence[float] | None, optim: dict[str, Any], label_smoothing: float,
                 focal_gamma: float, mixup_alpha: float, cutmix_alpha: float, mix_prob: float,
                 channels_last: bool, nan_check_every: int, live_step_loss: bool, preprocess: dict[str, Any]):
        super().__init__()
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.num_classes = len(self.class_names)
        if self.num_classes < 2:
            raise ConfigError(f"a classifier needs at least 2 classes, got {self.class_names}")
        self.net = build_backbone(backbone, self.num_classes, weights=weights, dropout=dropout,
                                  img_size=preprocess["img_size"])
        self.arch = backbone_info(backbone)  # blocks, head, stages, Grad-CAM layer (models/backbones.py)
        self.blocks = self.arch.block_names
        cw = torch.tensor(class_weights, dtype=torch.float32) if class_weights is not None else None
        self.register_buffer("class_weight", cw, persistent=False)
        self.train_metrics = _metrics(self.num_classes, "train/", validate_args=False)
        self.val_metrics = _metrics(self.num_classes, "val/")
        self.val_loss = MeanMetric()
        self.register_buffer("_nonfinite", torch.zeros((), dtype=torch.bool), persistent=False)
        self._frozen: list[torch.nn.Module] = []
        self.mixer = build_mixer(mixup_alpha, cutmix_alpha, mix_prob, self.num_classes)
        self.distill: tuple[Any, float, float] | None = None  # (teacher, temperature, alpha), see set_teacher
        self.set_phase("full", "all", 1e-3, 1)  # set_phase before each fit says what trains

    def set_teacher(self, teacher, temperature: float, alpha: float) -> None:
        """Learn from ``teacher`` too (``teacher.probabilities(images, temperature)``: softened class
        probabilities of this model's own input batch): the loss becomes ``alpha * hard + (1 - alpha) * soft``.
        The teacher is not a submodule: its weights stay out of this model's checkpoints and optimiser."""
        self.distill = (teacher, float(temperature), float(alpha))

    # ------------------------------------------------------------------ phases
    def set_phase(self, name: str, train_blocks, lr: float, epochs: int, total_steps: int | None = None,
                  warmup_steps: int = 0, lr_decay: float = 1.0) -> None:
        """Freeze everything but ``train_blocks`` and the head; the next optimiser uses ``lr`` (earlier trained
        blocks ``lr * lr_decay**k``), warmed up over ``warmup_steps`` of the phase's ``total_steps``."""
        blocks = resolve_blocks(train_blocks, self.blocks)
        self._frozen = apply_freeze(self.net, blocks, self.arch.blocks, self.arch.head)
        self.phase = {"name": name, "train_blocks": blocks, "lr": float(lr), "epochs": int(epochs),
                      "total_steps": int(total_steps or epochs), "warmup_steps": int(warmup_steps),
                      "lr_decay": float(lr_decay)}
        self.train(self.training)

    def block_parameters(self, name: str) -> list[torch.nn.Parameter]:
        """The parameters of one block of the backbone (a name of ``self.blocks``)."""
        return [self.net.get_parameter(p) for p in self.arch.block(name).params]

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Discriminative rates: the head at the phase's lr, each trained block from the last one back at
        ``lr * lr_decay**k`` (k = 1, 2, ...); blocks are ordered as the network runs them."""
        lr, decay = self.phase["lr"], self.phase["lr_decay"]
        groups = [{"params": [p for p in self.head().parameters() if p.requires_grad], "lr": lr, "name": "head"}]
        for k, block in enumerate(reversed(self.phase["train_blocks"]), start=1):
            params = [p for p in self.block_parameters(block) if p.requires_grad]
            if params:
                groups.append({"params": params, "lr": lr * decay**k, "name": block})
        return groups

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

    def head(self) -> torch.nn.Module:
        return self.net.get_submodule(self.arch.head)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        """Images (NxCxHxW) through the whole network; backbone features (NxD, a feature-cached phase,
        see training/features.py) through the head only."""
        return self.head()(x) if x.ndim == 2 else self(x)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The training objective: class-weighted (focal) cross-entropy with label smoothing; ``targets`` are
        class indices or, for mixed images, class distributions (see losses.py)."""
        hp = self.hparams
        weight = None if self.class_weight is None else self.class_weight.to(logits.device)  # no-op in training
        return classification_loss(logits, targets, weight, hp.label_smoothing, hp.focal_gamma)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, y = batch[0], batch[1]
        mixed = y
        if self.mixer is not None and x.ndim == 4 and len(x) % 2 == 0:  # images, in even batches (timm)
            x, mixed = self.mixer(x, y)
        logits = self._logits(x)
        loss = self.loss(logits, mixed)
        if self.distill is not None and x.ndim == 4:  # images; a feature-cached phase learns from labels only
            teacher, temperature, alpha = self.distill
            soft = distillation_loss(logits, teacher.probabilities(x, temperature), temperature)
            self.log("train/distill_loss", soft, on_step=False, on_epoch=True, batch_size=len(y))
            loss = alpha * loss + (1.0 - alpha) * soft
        self._nonfinite |= ~torch.isfinite(loss.detach())
        if (batch_idx + 1) % self.hparams.nan_check_every == 0:
            self._check_finite(batch_idx)
        self.train_metrics.update(logits.detach().float().softmax(-1), y)
        # in the progress bar, the per-step loss is read back from the device after every step (a host sync)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=self.hparams.live_step_loss,
                 batch_size=len(y))
        return loss

    def _check_finite(self, batch_idx: int) -> None:
        if bool(self._nonfinite):
            raise NonFiniteLossError(
                f"training loss became NaN/inf in phase {self.phase['name']!r} (epoch {self.current_epoch}, "
                f"batch {batch_idx}). Lower the learning rate (stage.phases.{self.phase['name']}.lr), "
                "try trainer.precision=32, or check the data for broken images."
            )

    def on_fit_start(self) -> None:
        if self.distill is not None:  # the teacher follows the student to its device (and dtype, for *-true)
            self.distill[0].to(device=self.device, dtype=next(self.net.parameters()).dtype)

    def on_train_epoch_end(self) -> None:
        self._check_finite(-1)
        self.log_dict(self.train_metrics.compute(), sync_dist=False)
        self.train_metrics.reset()

    def validation_step(self, batch, batch_idx: int) -> None:
        x, y = batch[0], batch[1]
        logits = self._logits(x).float()
        self.val_loss.update(self.loss(logits, y), weight=len(y))
        self.val_metrics.update(logits.softmax(-1), y)

    def on_validation_epoch_end(self) -> None:
        out = self.val_metrics.compute()
        out["val/loss"] = self.val_loss.compute()
        self.log_dict(out, prog_bar=True)
        self.val_metrics.reset()
        self.val_loss.reset()

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        opt = build_optimizer(self.parameter_groups(), self.hparams.optim)
        return build_schedule(opt, self.hparams.optim, self.phase)
