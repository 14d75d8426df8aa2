"""The teacher of a distilled run (``distill.teacher``): a trained medimg model, or the mean of a k-fold run's
folds, frozen in eval mode, giving softened class probabilities for the student's own batch.

The student's batch is normalised with the student's statistics at the student's size; each teacher member
gets it renormalised to its own statistics (exact: one per-channel affine map) and resized to its own size
when that differs (bilinear, antialiased). Images with another channel count cannot be shared and are refused.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F

from medimg.data.transforms import Preprocess
from medimg.errors import ConfigError, MissingDataError
from medimg.evaluation.cross_validation import find_fold_runs
from medimg.inference import check_same_classes, load_trained

log = logging.getLogger("medimg.train")


class Member(torch.nn.Module):
    """One teacher network with the map from the student's normalised images to its own."""

    def __init__(self, net: torch.nn.Module, own: Preprocess, student: Preprocess):
        super().__init__()
        if len(own.mean) != len(student.mean):
            raise ConfigError(f"the teacher's images have {len(own.mean)} channel(s) and the student's "
                              f"{len(student.mean)}: they cannot share a batch; train the student with the "
                              f"teacher's dataset.mean and dataset.std (mean {list(own.mean)}, std {list(own.std)})")
        self.net = net
        s_mean, s_std = torch.tensor(student.mean), torch.tensor(student.std)
        t_mean, t_std = torch.tensor(own.mean), torch.tensor(own.std)
        # x_teacher = (x * s_std + s_mean - t_mean) / t_std, per channel
        self.register_buffer("scale", (s_std / t_std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("shift", ((s_mean - t_mean) / t_std).view(1, -1, 1, 1), persistent=False)
        self.same_statistics = own.mean == student.mean and own.std == student.std
        self.size = None if own.img_size == student.img_size else own.img_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.same_statistics:
            x = x * self.scale.to(x.dtype) + self.shift.to(x.dtype)
        if self.size is not None:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return self.net(x)


class Teacher(torch.nn.Module):
    """Frozen members whose softened probabilities are averaged; always in eval mode."""

    def __init__(self, members: list[Member], sources: list[Path]):
        super().__init__()
        self.members = torch.nn.ModuleList(members)
        self.sources = sources
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> Teacher:
        return super().train(False)  # BatchNorm statistics and dropout of the teacher never change

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, temperature: float) -> torch.Tensor:
        """The members' mean of ``softmax(logits / temperature)`` for the student's batch ``x`` (N, C)."""
        probs = [(m(x).float() / temperature).softmax(-1) for m in self.members]
        return torch.stack(probs).mean(0)


def teacher_checkpoints(teacher: str) -> list[Path]:
    """``distill.teacher`` as checkpoint paths: a checkpoint, a run folder (its best.ckpt) or a k-fold multirun
    folder (each finished fold's best.ckpt)."""
    p = Path(teacher).expanduser()
    if p.is_file():
        return [p]
    if (p / "checkpoints" / "best.ckpt").is_file():
        return [p / "checkpoints" / "best.ckpt"]
    if p.is_dir():
        try:
            return [run / "checkpoints" / "best.ckpt" for run in find_fold_runs(p)]
        except MissingDataError:
            pass
    raise MissingDataError(f"distill.teacher={teacher} is neither a checkpoint nor a run folder (with "
                           "checkpoints/best.ckpt) nor a k-fold multirun folder of finished fold runs; give "
                           "a trained run's checkpoints/best.ckpt")


def load_teacher(teacher: str, class_names: list[str], student: Preprocess, dataset: str) -> Teacher:
    """The frozen teacher of ``distill.teacher`` for a student of these classes and preprocessing."""
    paths = teacher_checkpoints(teacher)
    members = []
    for path in paths:
        trained = load_trained(path)
        check_same_classes(trained.class_names, class_names, path, dataset)
        members.append(Member(trained.model, trained.preprocess, student))
    backbones = sorted({str(m.net.hparams.backbone) for m in members})
    log.info("distilling from %s: %d member(s) (%s)%s", teacher, len(members), ", ".join(backbones),
             "" if all(m.same_statistics and m.size is None for m in members) else
             "; the student's batch is renormalised/resized to each member's own preprocessing")
    return Teacher(members, paths)
