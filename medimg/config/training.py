"""Settings of a training run (conf/train.yaml and its groups), read once from the composed config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from medimg.config.dataset import DatasetSettings
from medimg.config.evaluation import CalibrationSettings, EvaluationSettings
from medimg.config.schema import auto_or_bool, one_of, positive, read, require
from medimg.config.trainer_args import check_trainer_arguments
from medimg.names import CAM_METHODS, PRECISIONS, VALIDATION_METRICS

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "step", "plateau", "none")


@dataclass(frozen=True)
class PathSettings:
    root_dir: str
    data_dir: str
    cache_dir: str
    output_dir: str
    log_dir: str


@dataclass(frozen=True)
class BackboneSettings:
    name: str
    weights: str | None
    last_blocks: Any              # last | a count of last blocks | a list of block names | all
    dropout: float

    def check(self, where: str) -> None:
        require(0 <= self.dropout < 1, f"{where}.dropout", f"must be in [0, 1), got {self.dropout!r}")


@dataclass(frozen=True)
class PhaseSettings:
    """One phase of a stage. ``train_blocks``, ``epochs`` and ``lr`` are required; a stage file may leave out the
    others, which then take these defaults (the built-in stages list every key, so that each can be overridden
    from the command line without ``+``)."""

    train_blocks: Any             # [] (frozen backbone) | all | last | a count of last blocks | block name(s)
    epochs: int
    lr: Any                       # a learning rate | find (Lightning's learning-rate finder)
    patience: int | None = None   # early-stopping patience in validations (null = off)
    feature_cache: bool = False   # frozen backbone: features computed once (no augmentation)
    head_fit: str = "convex"      # feature-cached head: convex (solved to convergence) | epochs (Adam over epochs)
    min_steps: int = 0            # the phase takes at least this many optimiser steps (its epochs are raised)
    patience_min_steps: int = 0   # early stopping waits at least this many optimiser steps (patience raised)
    warmup_steps: int = 0         # linear learning-rate warmup over the first optimiser steps
    lr_decay: float = 1.0         # discriminative rates: each earlier trained block gets lr x this factor more

    def check(self, where: str) -> None:
        require(isinstance(self.epochs, int) and self.epochs >= 1, f"{where}.epochs", "must be an integer >= 1")
        if self.lr != "find":
            positive(self.lr, f"{where}.lr")
        require(self.patience is None or (isinstance(self.patience, int) and self.patience >= 1),
                f"{where}.patience", "must be null (no early stopping) or an integer >= 1")
        one_of(self.head_fit, ("convex", "epochs"), f"{where}.head_fit")
        for key in ("min_steps", "patience_min_steps", "warmup_steps"):
            require(isinstance(getattr(self, key), int) and getattr(self, key) >= 0, f"{where}.{key}",
                    "must be an integer >= 0")
        require(0 < self.lr_decay <= 1, f"{where}.lr_decay", f"must be in (0, 1], got {self.lr_decay!r}")
        require(not (self.lr == "find" and self.feature_cache), f"{where}.lr",
                "lr=find needs a phase trained on images; with feature_cache=true the head is solved "
                "(head_fit=convex) or trained on fixed features: set a number, or feature_cache=false")


@dataclass(frozen=True)
class StageSettings:
    name: str
    phases: dict[str, PhaseSettings]

    def check(self, where: str) -> None:
        require(len(self.phases) > 0, f"{where}.phases", "a stage needs at least one phase")


@dataclass(frozen=True)
class OptimSettings:
    optimizer: str
    weight_decay: float
    momentum: float
    scheduler: str
    step_size: int
    gamma: float
    probe_l2: list[float]
    probe_max_iter: int

    def check(self, where: str) -> None:
        one_of(self.optimizer, OPTIMIZERS, f"{where}.optimizer")
        require(len(self.probe_l2) > 0 and all(v >= 0 for v in self.probe_l2), f"{where}.probe_l2",
                "must list L2 strengths >= 0 to try")
        positive(self.probe_max_iter, f"{where}.probe_max_iter")
        one_of(self.scheduler, SCHEDULERS, f"{where}.scheduler")
        require(self.weight_decay >= 0, f"{where}.weight_decay", "must be >= 0")
        positive(self.step_size, f"{where}.step_size")
        positive(self.gamma, f"{where}.gamma")


@dataclass(frozen=True)
class ModelSettings:
    label_smoothing: float
    focal_gamma: float
    mixup_alpha: float
    cutmix_alpha: float
    mix_prob: float
    ema_decay: float | None
    nan_check_every: int
    step_loss_in_bar: Any         # auto | true | false
    channels_last: Any            # auto | true | false
    compile: bool
    compile_backend: str

    def check(self, where: str) -> None:
        require(0 <= self.label_smoothing < 1, f"{where}.label_smoothing", "must be in [0, 1)")
        require(self.focal_gamma >= 0, f"{where}.focal_gamma", f"must be >= 0 (0 = cross-entropy), got "
                                                               f"{self.focal_gamma!r}")
        for key in ("mixup_alpha", "cutmix_alpha"):
            require(getattr(self, key) >= 0, f"{where}.{key}", "must be >= 0 (0 = off)")
        require(0 <= self.mix_prob <= 1, f"{where}.mix_prob", "must be a probability in [0, 1]")
        require(self.ema_decay is None or 0 < self.ema_decay < 1, f"{where}.ema_decay",
                "must be null (off) or in (0, 1), e.g. 0.999")
        positive(self.nan_check_every, f"{where}.nan_check_every")
        auto_or_bool(self.step_loss_in_bar, f"{where}.step_loss_in_bar")
        auto_or_bool(self.channels_last, f"{where}.channels_last")


@dataclass(frozen=True)
class DistillSettings:
    teacher: str | None           # a checkpoint, a run folder or a k-fold multirun folder; None = no teacher
    temperature: float
    alpha: float                  # share of the hard-label loss

    def check(self, where: str) -> None:
        positive(self.temperature, f"{where}.temperature")
        require(0 <= self.alpha <= 1, f"{where}.alpha", f"must be in [0, 1] (the hard-label share), got "
                                                        f"{self.alpha!r}")


@dataclass(frozen=True)
class TrainerSettings:
    accelerator: str
    devices: Any
    num_nodes: int
    strategy: str
    precision: Any
    max_epochs: int | None
    deterministic: Any
    log_every_n_steps: int
    check_val_every_n_epoch: int
    val_min_steps: int    # medimg's: optimiser steps between validations on a small set (training/budget.py)
    gradient_clip_val: float | None
    accumulate_grad_batches: int
    num_sanity_val_steps: int
    enable_progress_bar: bool
    fast_dev_run: Any
    limit_train_batches: Any
    limit_val_batches: Any
    limit_test_batches: Any
    overfit_batches: Any
    detect_anomaly: bool
    extra: dict[str, Any] = field(default_factory=dict)  # any other Trainer argument (+trainer.<arg>=...)

    def check(self, where: str) -> None:
        one_of(self.accelerator, ("auto", "cpu", "gpu", "cuda", "mps"), f"{where}.accelerator")
        one_of(str(self.precision), ("auto", *PRECISIONS), f"{where}.precision")
        devices_ok = self.devices in ("auto", -1) or (isinstance(self.devices, int) and self.devices > 0) or (
            isinstance(self.devices, list) and len(self.devices) > 0) or (
            isinstance(self.devices, str) and self.devices.replace(",", "").strip().isdigit())
        require(devices_ok and not isinstance(self.devices, bool), f"{where}.devices",
                f"must be a count > 0, -1 (all), auto, or a list of device ids such as [0,1], got {self.devices!r}")
        positive(self.max_epochs, f"{where}.max_epochs", allow_none=True)
        positive(self.check_val_every_n_epoch, f"{where}.check_val_every_n_epoch")
        require(isinstance(self.val_min_steps, int) and self.val_min_steps >= 0, f"{where}.val_min_steps",
                f"must be an integer >= 0 (0 = validate every epoch), got {self.val_min_steps!r}")
        positive(self.accumulate_grad_batches, f"{where}.accumulate_grad_batches")
        check_trainer_arguments(self.extra, [f for f in self.__dict__ if f != "extra"], where)

    def lightning_kwargs(self) -> dict[str, Any]:
        """The Trainer arguments that pass through as they are (unset limits left out)."""
        own = {"accelerator", "precision", "deterministic", "max_epochs", "val_min_steps", "check_val_every_n_epoch",
               "extra"}
        kw = {k: v for k, v in self.__dict__.items() if k not in own and v is not None}
        return {**kw, **self.extra}


@dataclass(frozen=True)
class CheckpointSettings:
    save_last: bool
    save_top_k: int


@dataclass(frozen=True)
class EarlyStoppingSettings:
    enabled: bool
    min_delta: float
    from_start: bool              # a phase must beat the score of the weights it starts from within its patience


@dataclass(frozen=True)
class GradCamLogSettings:
    enabled: bool
    every_n_epochs: int
    num_images: int
    method: str
    layer: str | None

    def check(self, where: str) -> None:
        positive(self.every_n_epochs, f"{where}.every_n_epochs")
        positive(self.num_images, f"{where}.num_images")
        one_of(self.method, CAM_METHODS, f"{where}.method")


@dataclass(frozen=True)
class CallbackSettings:
    checkpoint: CheckpointSettings
    early_stopping: EarlyStoppingSettings
    lr_monitor: bool
    rich_progress: bool
    epoch_log: Any                # auto | true | false: one line per epoch on the console (training/epoch_log.py)
    throughput: bool
    gradcam: GradCamLogSettings


@dataclass(frozen=True)
class TrainSettings:
    task_name: str
    seed: int
    ckpt_path: str | None
    test: bool
    monitor: str
    monitor_mode: str
    optimized_metric: str | None
    paths: PathSettings
    dataset: DatasetSettings
    backbone: BackboneSettings
    stage: StageSettings
    optim: OptimSettings
    model: ModelSettings
    distill: DistillSettings
    trainer: TrainerSettings
    logger: dict[str, Any] | None  # kind -> logger arguments (tensorboard, csv, ...)
    callbacks: CallbackSettings
    calibration: CalibrationSettings
    evaluation: EvaluationSettings

    def check(self, where: str) -> None:
        one_of(self.monitor_mode, ("max", "min"), "monitor_mode")
        auto_or_bool(self.callbacks.epoch_log, "callbacks.epoch_log")
        for name, ph in self.stage.phases.items():
            require(ph.warmup_steps == 0 or self.optim.scheduler in ("cosine", "none"),
                    f"stage.phases.{name}.warmup_steps", f"warmup needs optim.scheduler=cosine or none, "
                                                        f"not {self.optim.scheduler}")
        require(not (self.dataset.sampling == "balanced" and self.dataset.class_weights), "dataset.sampling",
                "balanced sampling and class_weights=true would correct the class imbalance twice; set "
                "dataset.class_weights=false (or dataset.sampling=shuffle)")
        require(self.monitor.startswith("val/"), "monitor", f"must be a validation metric (val/...), "
                                                             f"got {self.monitor!r}")
        one_of(self.monitor, VALIDATION_METRICS, "monitor")
        require(self.stage.name != "distill" or self.distill.teacher is not None, "distill.teacher",
                "stage=distill needs a teacher: distill.teacher=<run>/checkpoints/best.ckpt (or the run folder, "
                "or a k-fold multirun folder)")
        if self.distill.teacher is not None:
            require(any(not ph.feature_cache for ph in self.stage.phases.values()), "distill.teacher",
                    f"stage={self.stage.name} trains no phase on images (every phase uses cached features), so "
                    "the teacher would see nothing; use stage=distill or a phase with feature_cache=false")
        best = "min" if self.monitor == "val/loss" else "max"
        require(self.monitor_mode == best, "monitor_mode", f"{self.monitor} is best when "
                f"{'lowest' if best == 'min' else 'highest'}; set monitor_mode={best}")


def train_settings(config: dict[str, Any]) -> TrainSettings:
    """The resolved train config (plain dicts, ``OmegaConf.to_container(cfg, resolve=True)``) as settings."""
    return read(TrainSettings, config, "")
