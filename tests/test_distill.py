"""Knowledge distillation: Hinton's loss, a teacher that reads the student's batch in its own preprocessing,
a distilled run end to end (its checkpoint holds the student alone and records the teacher), k-fold teachers,
and the mistakes a user makes with them."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F

from medimg.data.transforms import Preprocess
from medimg.errors import ConfigError, MissingDataError
from medimg.inference import ClassMismatchError, load_trained
from medimg.models.backbones import build_backbone
from medimg.models.losses import distillation_loss
from medimg.train import train
from medimg.training.teacher import Member, load_teacher, teacher_checkpoints


def test_distillation_loss_is_t_squared_kl_of_the_softened_outputs():
    torch.manual_seed(0)
    student, teacher, t = torch.randn(6, 4), torch.randn(6, 4), 3.0
    p = (teacher / t).softmax(-1)
    q = (student / t).log_softmax(-1)
    manual = (p * (p.log() - q)).sum(-1).mean() * t * t
    assert distillation_loss(student, p, t).item() == pytest.approx(manual.item(), rel=1e-6)
    assert distillation_loss(teacher, p, t).item() == pytest.approx(0.0, abs=1e-6)  # nothing left to learn


def test_a_member_reads_the_student_batch_in_its_own_preprocessing(tiny_ckpt):
    trained = load_trained(tiny_ckpt)
    own = trained.preprocess
    student = Preprocess(own.img_size, own.resize, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), own.interpolation)
    member = Member(trained.model, own, student)
    img = torch.rand(3, 3, own.img_size, own.img_size)

    def normalised(p: Preprocess) -> torch.Tensor:
        return (img - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)

    with torch.no_grad():
        assert torch.allclose(member(normalised(student)), trained.model(normalised(own)), atol=1e-4)
        bigger = Member(trained.model, own, Preprocess(2 * own.img_size, own.resize, own.mean, own.std, "bilinear"))
        assert bigger(torch.randn(2, 3, 2 * own.img_size, 2 * own.img_size)).shape == (2, 4)
    gray = Preprocess(own.img_size, own.resize, (0.5,), (0.25,), own.interpolation)
    with pytest.raises(ConfigError, match=r"teacher's images have 3 channel\(s\) and the student's 1"):
        Member(trained.model, own, gray)


def test_the_student_learns_from_the_teacher_and_its_labels_in_the_share_alpha(tiny_ckpt):
    trained = load_trained(tiny_ckpt)
    teacher = load_teacher(str(tiny_ckpt), trained.class_names, trained.preprocess, "synthetic")
    student = load_trained(tiny_ckpt).model  # in eval mode: the same logits below and in training_step
    x, y = torch.randn(4, 3, trained.preprocess.img_size, trained.preprocess.img_size), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        logits = student(x)
    hard = F.cross_entropy(logits, y, weight=student.class_weight).item()
    soft = distillation_loss(logits, teacher.probabilities(x, 2.0), 2.0).item()
    for alpha in (1.0, 0.0, 0.25):
        student.set_teacher(teacher, 2.0, alpha)
        with torch.no_grad(), pytest.warns(UserWarning, match="self.log"):
            loss = student.training_step((x, y), 0).item()
        assert loss == pytest.approx(alpha * hard + (1 - alpha) * soft, rel=1e-5), alpha
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.train().training


def test_a_distilled_run_keeps_the_student_alone_and_records_its_teacher(tiny_cfg, tiny_ckpt, tmp_path, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="medimg.train"):
        metrics = train(tiny_cfg("stage=distill", f"distill.teacher={tiny_ckpt}", "stage.phases.distill.min_steps=0",
                                 "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
                                 "evaluation.gallery_per_class=0"))
    assert math.isfinite(metrics["test/loss"]) and 0 <= metrics["test/auroc"] <= 1
    said = " ".join(r.getMessage() for r in caplog.records)
    assert f"distilling from {tiny_ckpt}: 1 member(s) (resnet18); the student's batch is renormalised" in said
    assert "phase 'head' solves the head on cached features, from the labels alone" in said
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    eager = {f"net.{k}" for k in build_backbone("resnet18", num_classes=4, weights=None, dropout=0.2).state_dict()}
    assert {k for k in ckpt["state_dict"]} == eager  # no teacher weights in the student's checkpoint
    assert ckpt["medimg"]["settings"]["distill"] == {"teacher": str(tiny_ckpt), "temperature": 4.0, "alpha": 0.5}
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert "distill" in json.dumps(history)  # the distill phase ran and was recorded


def test_a_k_fold_teacher_averages_its_folds(tiny_ckpt, tmp_path):
    folds = tmp_path / "cv"
    for k in range(2):
        run = folds / str(k)
        (run / "checkpoints").mkdir(parents=True)
        shutil.copy(tiny_ckpt, run / "checkpoints" / "best.ckpt")
        (run / "metrics.json").write_text("{}")
    assert teacher_checkpoints(str(folds)) == [folds / "0" / "checkpoints" / "best.ckpt",
                                               folds / "1" / "checkpoints" / "best.ckpt"]
    assert teacher_checkpoints(str(folds / "1")) == [folds / "1" / "checkpoints" / "best.ckpt"]  # a run folder
    trained = load_trained(tiny_ckpt)
    both = load_teacher(str(folds), trained.class_names, trained.preprocess, "synthetic")
    one = load_teacher(str(tiny_ckpt), trained.class_names, trained.preprocess, "synthetic")
    x = torch.randn(3, 3, trained.preprocess.img_size, trained.preprocess.img_size)
    assert len(both.members) == 2
    assert torch.allclose(both.probabilities(x, 4.0), one.probabilities(x, 4.0), atol=1e-6)


def test_a_teacher_that_cannot_teach_is_named(tiny_ckpt, tmp_path):
    with pytest.raises(MissingDataError, match=r"distill.teacher=/no/such is neither a checkpoint nor a run"):
        teacher_checkpoints("/no/such")
    trained = load_trained(tiny_ckpt)
    other = list(reversed(trained.class_names))
    with pytest.raises(ClassMismatchError, match=r"trained on classes \['nevus'.*has classes \['vascular'"):
        load_teacher(str(tiny_ckpt), other, trained.preprocess, "synthetic")


def test_a_teacher_beside_a_stage_of_cached_features_only_is_refused(tiny_cfg, tiny_ckpt):
    with pytest.raises(ConfigError, match="trains no phase on images"):
        train(tiny_cfg("stage=head", f"distill.teacher={tiny_ckpt}"))
