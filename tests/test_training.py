"""End-to-end tiny runs: freeze semantics of the two-stage recipe, resume, precision, determinism."""

from __future__ import annotations

import json

import pytest
import torch

from medimg.errors import ConfigError
from medimg.inference import medimg_state as read_medimg_state
from medimg.models.backbones import build_backbone
from medimg.train import train
from tests.conftest import Interrupted, compose_train, interrupt_at

pytestmark = pytest.mark.slow

FROZEN_BLOCKS = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.")


def _net_state(ckpt_path) -> dict[str, torch.Tensor]:
    sd = torch.load(ckpt_path, map_location="cpu", weights_only=True)["state_dict"]
    return {k.removeprefix("net."): v for k, v in sd.items() if k.startswith("net.")}


def _changed(a: dict, b: dict, prefix: str) -> bool:
    keys = [k for k in a if k.startswith(prefix) and not k.endswith("num_batches_tracked")]
    assert keys, prefix
    return any(not torch.equal(a[k], b[k]) for k in keys)


@pytest.fixture
def init_weights(tmp_path):
    """A known starting state dict for the backbone (stands in for pretrained weights)."""
    torch.manual_seed(0)
    net = build_backbone("resnet18", num_classes=4)
    for m in net.modules():  # non-trivial BN statistics, so that an update would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.9, 1.1)
    path = tmp_path / "init.pth"
    torch.save({k: v for k, v in net.state_dict().items() if not k.startswith("fc.")}, path)
    return path, net.state_dict()


def test_two_stage_freeze_semantics(tiny_cfg, init_weights, tmp_path):
    path, init = init_weights
    cfg = tiny_cfg("stage=two_stage", f"backbone.weights={path}", "trainer.max_epochs=2")
    metrics = train(cfg)
    ckpts = tmp_path / "run" / "checkpoints"
    head, ft = _net_state(ckpts / "head-best.ckpt"), _net_state(ckpts / "finetune-best.ckpt")

    # stage 1: the backbone's weights and BatchNorm statistics are untouched, the head trained
    for block in (*FROZEN_BLOCKS, "layer4."):
        assert not _changed(init, head, block), f"{block} changed during the head phase"
    assert _changed(init, head, "fc.")
    # stage 2: layer4 (weights and BN statistics) trains, layers 1-3 stay as they were
    assert _changed(head, ft, "layer4.")
    assert any(not torch.equal(head[k], ft[k]) for k in ft if k.startswith("layer4.") and "running_mean" in k)
    for block in FROZEN_BLOCKS:
        assert not _changed(head, ft, block), f"{block} changed during the fine-tune phase"

    state = read_medimg_state(ckpts / "finetune-best.ckpt")
    assert state["phase"]["train_blocks"] == ["layer4"] and state["phase"]["lr"] == pytest.approx(1e-4)
    assert "head" in state["phases_done"]
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for key in ("test/accuracy", "test/auroc", "test/f1_macro", "test/loss"):
        assert key in saved and saved[key] == pytest.approx(metrics[key])
    assert (ckpts / "last.ckpt").exists() and (ckpts / "best.ckpt").exists()
    assert list((tmp_path / "run" / "csv").iterdir()), "logger wrote nothing"


def test_resume_in_stage_two_keeps_layer4_trainable(tiny_cfg, init_weights, tmp_path, monkeypatch):
    path, _ = init_weights
    base = ["stage=two_stage", f"backbone.weights={path}", "trainer.max_epochs=null",
            "stage.phases.head.epochs=1", "stage.phases.finetune.epochs=2", "stage.phases.finetune.min_steps=0",
            "callbacks.early_stopping.enabled=false", "trainer.val_min_steps=0",
            "callbacks.checkpoint.save_top_k=-1"]  # keep every epoch's checkpoint: <phase>-<epoch>.ckpt
    interrupt_at(monkeypatch, "finetune", 1)  # a crash in the second fine-tune epoch
    with pytest.raises(Interrupted):
        train(tiny_cfg(*base))
    monkeypatch.undo()
    ckpts = tmp_path / "run" / "checkpoints"
    last = ckpts / "last.ckpt"
    assert read_medimg_state(last)["phase"]["name"] == "finetune"
    before = _net_state(last)
    head_mtime = (ckpts / "head-best.ckpt").stat().st_mtime_ns  # the convex head phase
    assert not (ckpts / "finetune-01.ckpt").exists()

    # continue the fine-tune phase from last.ckpt: its second epoch
    train(tiny_cfg(*base, f"ckpt_path={last}"))
    after = _net_state(ckpts / "finetune-01.ckpt")
    ck = torch.load(ckpts / "finetune-01.ckpt", map_location="cpu", weights_only=True)
    assert ck["epoch"] == 1 and read_medimg_state(last)["phase_completed"]
    assert _changed(before, after, "layer4."), "layer4 was frozen after resuming"
    for block in FROZEN_BLOCKS:
        assert not _changed(before, after, block), f"{block} trained after resuming"
    assert (ckpts / "head-best.ckpt").stat().st_mtime_ns == head_mtime, "the head phase ran again"


def test_same_seed_same_metrics(tiny_cfg, tmp_path, data_dir):
    from tests.conftest import TINY

    a = train(tiny_cfg("stage=scratch"))
    b = train(compose_train(tmp_path / "again", data_dir, [*TINY, "stage=scratch"]))  # a run never reuses a folder
    assert a and a == b


def test_bf16_mixed_and_fp32_both_train(tmp_path, data_dir):
    from tests.conftest import TINY

    for precision in ("bf16-mixed", "32"):  # one step each: a CPU without bf16 units emulates it, 10x slower
        metrics = train(compose_train(tmp_path / precision, data_dir,
                                      [*TINY, "stage=scratch", f"trainer.precision={precision}",
                                       "trainer.limit_train_batches=1"]))
        assert 0.0 <= metrics["test/auroc"] <= 1.0 and torch.isfinite(torch.tensor(metrics["test/loss"]))


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50"])
def test_fast_dev_run_per_backbone(tiny_cfg, backbone):
    metrics = train(tiny_cfg(f"backbone={backbone}", "backbone.weights=null", "debug=fdr"))
    assert set(metrics) >= {"test/accuracy", "test/auroc", "test/f1_macro", "test/loss"}


def test_every_scheduler_and_optimizer_runs(tmp_path, data_dir):
    from tests.conftest import TINY

    for opt, sched in (("adamw", "step"), ("sgd", "plateau"), ("adam", "none")):
        metrics = train(compose_train(tmp_path / opt, data_dir, [*TINY, "stage=two_stage", f"optim.optimizer={opt}",
                                                                 f"optim.scheduler={sched}",
                                                                 "trainer.limit_train_batches=2"]))
        assert "test/auroc" in metrics


def test_resume_in_stage_one_with_plateau_then_fine_tunes(tiny_cfg, init_weights, tmp_path, monkeypatch):
    path, init = init_weights
    common = ["stage=two_stage", "stage.phases.head.feature_cache=false", "stage.phases.head.epochs=2",
              "stage.phases.finetune.epochs=1", f"backbone.weights={path}", "trainer.max_epochs=null",
              "stage.phases.head.min_steps=0", "stage.phases.finetune.min_steps=0", "optim.scheduler=plateau", "callbacks.early_stopping.enabled=false",
              "trainer.val_min_steps=0"]
    interrupt_at(monkeypatch, "head", 1)  # a crash in the second head epoch
    with pytest.raises(Interrupted):
        train(tiny_cfg(*common))
    monkeypatch.undo()
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert read_medimg_state(last)["phase"]["name"] == "head"

    train(tiny_cfg(*common, f"ckpt_path={last}"))
    ckpts = tmp_path / "run" / "checkpoints"
    state = read_medimg_state(ckpts / "last.ckpt")
    assert state["phase"]["name"] == "finetune" and set(state["phases_done"]) == {"head", "finetune"}
    head_ck = torch.load(ckpts / "head-best.ckpt", map_location="cpu", weights_only=True)
    assert head_ck["epoch"] in (0, 1)
    head, ft = _net_state(ckpts / "head-best.ckpt"), _net_state(ckpts / "finetune-best.ckpt")
    for block in (*FROZEN_BLOCKS, "layer4."):
        assert not _changed(init, head, block), f"{block} changed in the resumed head phase"
    assert _changed(head, ft, "layer4.")
    for block in FROZEN_BLOCKS:
        assert not _changed(head, ft, block)


def test_compiled_network_trains_and_saves_eager_parameter_names(tiny_cfg, tmp_path):
    # aot_eager: dynamo's graphs and AOT autograd as inductor gets them, without its C++ code generation
    metrics = train(tiny_cfg("stage=scratch", "model.compile=true", "model.compile_backend=aot_eager",
                             "dataset.img_size=32", "calibration=none"))
    assert metrics["test/auroc"] == metrics["test/auroc"]  # not NaN: the compiled net trained and was tested
    sd = torch.load(tmp_path / "run" / "checkpoints" / "best.ckpt", map_location="cpu", weights_only=True)
    eager = {f"net.{k}" for k in build_backbone("resnet18", num_classes=4, weights=None, dropout=0.2).state_dict()}
    assert {k for k in sd["state_dict"] if k.startswith("net.")} == eager  # no _orig_mod. prefixes


def test_an_unknown_compile_backend_is_refused_by_name(tiny_cfg):
    with pytest.raises(ConfigError, match=r"model.compile_backend=nope is not a torch.compile backend.*inductor"):
        train(tiny_cfg("model.compile=true", "model.compile_backend=nope"))
