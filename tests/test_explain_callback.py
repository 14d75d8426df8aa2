"""The Grad-CAM TensorBoard callback: logs overlays during training and leaves frozen blocks frozen."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medimg.train import runtime_of, train
from medimg.training.callbacks.gradcam_logger import GradCamLogger
from medimg.training.phase_book import PhaseBook
from tests.conftest import datamodule_of, make_classifier, settings_of


def _image_tags(log_dir: Path) -> dict[str, int]:
    tags: dict[str, int] = {}
    for ev in log_dir.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(ev), size_guidance={"images": 0})
        acc.Reload()
        for t in acc.Tags()["images"]:
            tags[t] = tags.get(t, 0) + len(acc.Images(t))
    return tags


class _Probe(Callback):
    """Records requires_grad and train/eval flags right after the Grad-CAM callback ran."""

    def __init__(self):
        self.seen: list[tuple[dict[str, bool], dict[str, bool]]] = []

    def on_validation_epoch_end(self, trainer, pl_module):
        self.seen.append(({n: p.requires_grad for n, p in pl_module.named_parameters()},
                          {n: m.training for n, m in pl_module.named_modules()}))


def test_frozen_phase_stays_frozen_with_the_callback(tiny_cfg, tmp_path):
    dm = datamodule_of(tiny_cfg("dataset.img_size=64", "dataset.num_images=96"))
    torch.manual_seed(0)
    model = make_classifier(dm.class_names)
    model.set_phase("head", [], 1e-2, 2)  # backbone frozen, head trains
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    backbone_before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    bn_before = model.net.layer4[-1].bn2.running_mean.clone()
    head_before = model.net.fc[1].weight.detach().clone()
    cam_cb, probe = GradCamLogger(every_n_epochs=1, num_images=4, method="gradcam", layer="layer3"), _Probe()
    logger = TensorBoardLogger(str(tmp_path), name="tb", version="head")
    trainer = L.Trainer(max_epochs=2, callbacks=[cam_cb, probe], logger=logger, accelerator="cpu",
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_train_batches=2, limit_val_batches=1, enable_checkpointing=False)
    trainer.fit(model, datamodule=dm)
    assert cam_cb.logged_epochs == [0, 1]
    for req, modes in probe.seen:  # right after each Grad-CAM pass, still inside validation
        assert req == flags
        assert not modes["net.layer4"] and not modes["net.bn1"]
    assert all(torch.equal(backbone_before[n], p) for n, p in model.named_parameters() if n in backbone_before)
    assert torch.equal(bn_before, model.net.layer4[-1].bn2.running_mean)  # frozen BatchNorm kept its statistics
    assert not torch.equal(head_before, model.net.fc[1].weight)  # while the head did train
    assert _image_tags(tmp_path / "tb").get("gradcam/val") == 2


def test_training_run_logs_gradcam_to_tensorboard(tiny_cfg):
    cfg = tiny_cfg("logger=tensorboard", "callbacks.gradcam.every_n_epochs=1", "callbacks.gradcam.num_images=3",
                   "callbacks.gradcam.layer=layer3", "dataset.img_size=64", "dataset.num_images=96", "test=false",
                   "stage.phases.head.head_fit=epochs")  # a convex head has no validation epochs to log at
    train(cfg)
    run = Path(cfg.paths.output_dir)
    tags = _image_tags(run / "tensorboard")
    assert tags.get("gradcam/val", 0) >= 2  # one per phase of the two_stage recipe (one epoch each)


def test_disabled_or_without_tensorboard_adds_nothing(tiny_cfg):
    from medimg.training.trainer import build_phase_trainer

    def phase_trainer(*overrides):
        s = settings_of(tiny_cfg(*overrides))
        book = PhaseBook(["a", "b"], {})
        return build_phase_trainer(s, runtime_of(s), book, "head", 1, None, Path(s.paths.output_dir))[0]

    for overrides in (("logger=csv",), ("logger=tensorboard", "callbacks.gradcam.enabled=false")):
        assert not any(isinstance(cb, GradCamLogger) for cb in phase_trainer(*overrides).callbacks)
    assert sum(isinstance(cb, GradCamLogger) for cb in phase_trainer("logger=tensorboard").callbacks) == 1
