"""The ImageClassifier a run trains, built from its settings and its data."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import replace

from medimg.config.dataset import PREPROCESS_KEYS, DatasetSettings
from medimg.config.runtime import Runtime
from medimg.config.schema import as_dict
from medimg.config.training import TrainSettings
from medimg.data.datamodule import MedImageDataModule, preprocess_of
from medimg.data.transforms import Preprocess
from medimg.errors import ConfigError
from medimg.inference import check_same_classes
from medimg.models.backbones import pretrained_preprocess
from medimg.models.classifier import ImageClassifier
from medimg.training.resume import Resume
from medimg.training.teacher import load_teacher


def run_preprocess(ds: DatasetSettings) -> Preprocess:
    """How a run prepares its images: the dataset's preprocessing keys, the null ones taken from the pretrained
    config of ``dataset.preprocess_from`` (the run's backbone, timm's ``resolve_data_config``); stored in
    the checkpoint, so evaluate, predict, export and explain use it as it was."""
    unset = [k for k in PREPROCESS_KEYS if getattr(ds, k) is None]
    if unset and ds.preprocess_from is not None:
        model = pretrained_preprocess(ds.preprocess_from)
        ds = replace(ds, **{k: model[k] for k in unset})
    return preprocess_of(ds)


def classifier_of(s: TrainSettings, rt: Runtime, class_names: Sequence[str], class_weights: list[float] | None,
                  weights: str | None) -> ImageClassifier:
    """The classifier the settings describe, for these classes (weights: ``backbone.weights`` or None)."""
    return ImageClassifier(
        backbone=s.backbone.name, class_names=list(class_names), weights=weights, dropout=s.backbone.dropout,
        class_weights=class_weights, optim=as_dict(s.optim), label_smoothing=s.model.label_smoothing,
        focal_gamma=s.model.focal_gamma, mixup_alpha=s.model.mixup_alpha, cutmix_alpha=s.model.cutmix_alpha,
        mix_prob=s.model.mix_prob, channels_last=rt.channels_last, nan_check_every=s.model.nan_check_every,
        live_step_loss=rt.live_step_loss, preprocess=run_preprocess(s.dataset).to_dict(),
    )


def build_model(s: TrainSettings, rt: Runtime, dm: MedImageDataModule, resume: Resume | None) -> ImageClassifier:
    if (s.model.mixup_alpha or s.model.cutmix_alpha) and len(dm.class_names) == 2:
        raise ConfigError("model.mixup_alpha / model.cutmix_alpha are for multiclass tasks: on a binary task mixed "
                          "labels train P(positive) towards the mixing ratio, and the operating threshold chosen on "
                          "validation then means little; use model.label_smoothing instead")
    if resume is not None:  # the checkpoint's head must fit these classes
        check_same_classes(resume.state.get("class_names", []), dm.class_names, resume.path, s.dataset.name)
    weights = None if resume is not None else s.backbone.weights  # a resume loads the run's own weights
    class_weights = dm.class_weights().tolist() if s.dataset.class_weights else None
    model = classifier_of(s, rt, dm.class_names, class_weights, weights)
    if s.model.compile:
        backend = compile_backend(s.model.compile_backend, rt.accelerator)
        model.net.compile(backend=backend)  # in place: parameter names (and so checkpoints) stay the eager ones
    if s.distill.teacher is not None:
        teacher = load_teacher(s.distill.teacher, dm.class_names, Preprocess.from_dict(model.hparams.preprocess),
                               s.dataset.name)
        model.set_teacher(teacher, s.distill.temperature, s.distill.alpha)
    return model


def compile_backend(backend: str, accelerator: str) -> str:
    """``model.compile_backend`` checked against torch.compile's backends; inductor on the CPU needs a C++
    compiler for its generated kernels."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise ConfigError(f"model.compile_backend={backend} is not a torch.compile backend; choose one of "
                          f"{', '.join(torch._dynamo.list_backends())} or aot_eager (no generated kernels)")
    if backend == "inductor" and accelerator == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
        raise ConfigError("model.compile=true on the CPU needs a C++ compiler for torch.compile's generated "
                          "kernels (install g++), or set model.compile=false (or model.compile_backend=aot_eager)")
    return backend
