"""Mistakes a user can make get one clear message, found before any data work, and no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch

from medimg.errors import ConfigError, UserError
from medimg.models.backbones import WeightsUnavailableError
from medimg.train import train
from tests.conftest import TINY, TINY_ANY_DATA, compose_train

ROOT = Path(__file__).resolve().parents[1]

BAD_CONFIGS = [
    ("dataset.img_size=0", "dataset.img_size: must be a number > 0"),
    ("dataset.batch_size=-4", "dataset.batch_size: must be a number > 0"),
    ("dataset.split.val=1.5", "dataset.split.val: must be a fraction in (0, 1)"),
    ("dataset.split.test=0.9", "leaves no training images"),
    ("stage.phases.finetune.train_blocks=[layer9]", "stage.phases.finetune.train_blocks: train_blocks ['layer9']"),
    ("optim.optimizer=adagrad", "optim.optimizer: 'adagrad' is not one of adam, adamw, sgd"),
    ("monitor=test/auroc", "monitor: must be a validation metric"),
    ("dataset.pin_memory=sometimes", "dataset.pin_memory: must be auto, true or false"),
    ("+dataset.imgsize=64", "unknown keys dataset.imgsize for source=synthetic"),
    ("evaluation.gallery_method=gradcampp", "evaluation.gallery_method: 'gradcampp' is not one of gradcam, gradcam++"),
    ("callbacks.gradcam.method=nope", "callbacks.gradcam.method: 'nope' is not one of gradcam"),
    ("calibration.selection.candidates=[temprature]", "calibration.selection.candidates: 'temprature' is not one of"),
    ("calibration.max_iter=-5", "calibration.max_iter: must be a number > 0"),
    ("calibration.method=temprature", "calibration.method: 'temprature' is not one of none, temperature"),
    ("calibration.selection.folds=1", "calibration.selection.folds: cross-validation needs at least 2 folds"),
    ("dataset.img_size=64.5", "dataset.img_size: must be a whole number, got 64.5"),
    ("seed=abc", "seed: must be a whole number, got 'abc'"),
    ("trainer.enable_progress_bar=maybe", "trainer.enable_progress_bar: must be true or false, got 'maybe'"),
    ("backbone.dropout=high", "backbone.dropout: must be a number, got 'high'"),
    ("monitor=val/auc", "monitor: 'val/auc' is not one of val/loss, val/accuracy, val/auroc, val/f1_macro"),
    ("monitor=val/loss", "monitor_mode: val/loss is best when lowest; set monitor_mode=min"),
    ("trainer.precision=bf15", "trainer.precision: 'bf15' is not one of auto, transformer-engine"),
    ("trainer.devices=0", "trainer.devices: must be a count > 0, -1 (all), auto, or a list of device ids"),
    ("dataset.split.seed=[1,2]", "dataset.split.seed: must be a whole number, got [1, 2]"),
    ("+trainer.max_epoch=1", "trainer.max_epoch is neither a medimg trainer key nor a Lightning Trainer argument; "
                             "did you mean trainer.max_epochs=1?"),
    ("+optim.optimiser=adam", "unknown config keys: optim.optimiser (did you mean optim.optimizer?)"),
    ("+dataset.img_sise=64", "did you mean dataset.img_size?"),
    ("stage=distill", "distill.teacher: stage=distill needs a teacher: distill.teacher=<run>/checkpoints/best.ckpt"),
    ("distill.alpha=1.5", "distill.alpha: must be in [0, 1] (the hard-label share), got 1.5"),
    ("distill.temperature=0", "distill.temperature: must be a number > 0"),
    ("evaluation.conformal.randomized=true", "evaluation.conformal.randomized: lac sets are not randomised"),
]


@pytest.mark.parametrize("override,message", BAD_CONFIGS)
def test_config_mistakes_stop_before_any_data_work(override, message, tmp_path):
    data = tmp_path / "data"
    cfg = compose_train(tmp_path / "run", data, [*TINY, override])
    with pytest.raises(ConfigError) as err:
        train(cfg)
    assert message in str(err.value)
    assert not data.exists(), "data work started before the config was checked"


def test_folder_without_root_names_the_key(tmp_path):
    cfg = compose_train(tmp_path / "run", tmp_path / "data", [*TINY_ANY_DATA, "dataset=folder"])
    with pytest.raises(ConfigError, match=r"dataset.root has no value; set it on the command line: dataset\.root=\.\.\."):
        train(cfg)


def test_offline_imagenet_weights_stop_before_the_data_is_generated(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    data = tmp_path / "data"
    cfg = compose_train(tmp_path / "run", data, [*TINY, "backbone.weights=imagenet"])
    with pytest.raises(WeightsUnavailableError, match="stage=scratch backbone.weights=null"):  # not two_stage
        train(cfg)
    assert not data.exists()


def test_every_user_error_is_a_user_error():
    from medimg.data.archive import DamagedArchiveError, UnsafeArchiveError
    from medimg.data.kaggle import DataNotReadyError, DownloadError, KaggleCredentialsError
    from medimg.data.readers import UnreadableImageError
    from medimg.export import ExportError
    from medimg.inference import CheckpointError, ClassMismatchError

    for cls in (ConfigError, CheckpointError, ClassMismatchError, WeightsUnavailableError, UnreadableImageError,
                DamagedArchiveError, UnsafeArchiveError, DataNotReadyError, DownloadError, KaggleCredentialsError,
                ExportError):
        assert issubclass(cls, UserError), cls


def _cli(module: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDIMG_ROOT": str(cwd), "PYTHONWARNINGS": "ignore", **(env or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("module,args,says", [
    ("medimg.train", ["dataset.img_size=0"], "dataset.img_size: must be a number > 0"),
    ("medimg.train", ["dataset=folder"], "dataset.root has no value"),
    ("medimg.evaluate", ["ckpt_path=/no/such/run/checkpoints/best.ckpt", "dataset=synthetic"], "does not exist"),
    ("medimg.predict", ["ckpt_path=/no/such.ckpt", "input=/no/such/folder"], "does not exist"),
    ("medimg.export", ["ckpt_path=/no/such.ckpt"], "does not exist"),
    ("medimg.download", ["dataset=synthetic"], "is not downloaded from Kaggle"),
])
def test_command_line_errors_are_one_message_without_traceback(module, args, says, tmp_path):
    proc = _cli(module, *args, f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in proc.stderr, proc.stderr[-2000:]


def test_debug_flag_keeps_the_traceback(tmp_path):
    proc = _cli("medimg.train", "dataset.img_size=0", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path,
                env={"MEDIMG_DEBUG": "1"})
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr


UNKNOWN_KEYS = [  # Hydra alone would advise adding these with +, which led into a traceback after the data loaded
    ("medimg.train", ["trainer.max_epoch=1"], "error: trainer.max_epoch is not a config key; did you mean "
                                              "trainer.max_epochs=1?"),
    ("medimg.train", ["+trainer.max_epoch=1"], "did you mean trainer.max_epochs=1?"),
    ("medimg.train", ["-m", "seed=1,2", "stage.phases.finetune.lrr=1e-4"], "did you mean stage.phases.finetune.lr=1e-4?"),
    ("medimg.evaluate", ["ckpt_pth=/no/such.ckpt"], "did you mean ckpt_path=/no/such.ckpt?"),
    ("medimg.evaluate", ["+trainer.precison=32", "ckpt_path=/no/such.ckpt"], "did you mean trainer.precision=32?"),
    ("medimg.predict", ["inputs=/no/such/folder"], "did you mean input=/no/such/folder?"),
    ("medimg.explain", ["ckpt_path=/no/such.ckpt", "max_image=4"], "did you mean max_images=4?"),
    ("medimg.serve", ["prot=8001"], "did you mean port=8001?"),
    ("medimg.download", ["dataset=ham10000", "keep_archiv=true"], "did you mean keep_archive=true?"),
    ("medimg.export", ["ckpt_path=/no/such.ckpt", "opst=18"], "did you mean opset=18?"),
]


PLUS = [case for case in UNKNOWN_KEYS if any(a.startswith("+") for a in case[1])]  # refused by the settings


@pytest.mark.parametrize("module,args,says", [case for case in UNKNOWN_KEYS if case not in PLUS])
def test_an_unknown_key_names_the_closest_one_before_any_work(module, args, says, tmp_path, capsys, monkeypatch):
    """Each command's guard, as its ``__main__`` block calls it (the command line itself: the test below)."""
    from medimg.config.overrides import guard_command_line

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.delenv("MEDIMG_DEBUG", raising=False)
    data = tmp_path / "data"
    with pytest.raises(SystemExit) as stop:
        guard_command_line(module.removeprefix("medimg."), [module, *args, f"paths.data_dir={data}"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert stop.value.code == 1 and len(errors) == 1 and says in errors[0], errors
    assert not data.exists(), "data work started before the key was checked"


@pytest.mark.parametrize("module,args,says", [UNKNOWN_KEYS[0], *PLUS])
def test_the_command_line_stops_at_an_unknown_key_in_one_line(module, args, says, tmp_path):
    data = tmp_path / "data"
    proc = _cli(module, *args, f"paths.data_dir={data}", cwd=tmp_path)
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr and "To append to your config use" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], proc.stderr[-2000:]
    assert not data.exists(), "data work started before the key was checked"


def test_a_missing_data_folder_is_named_before_the_weights_are_looked_for(tmp_path, monkeypatch):
    from medimg.errors import MissingDataError

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached weights: looking for them would fail
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda *a, **k: (_ for _ in ()).throw(
        urllib.error.URLError("no network")))
    cfg = compose_train(tmp_path / "run", tmp_path / "data", [*TINY_ANY_DATA, "dataset=folder",
                                                               f"dataset.root={tmp_path / 'no_such_folder'}",
                                                               "backbone.weights=imagenet"])
    with pytest.raises(MissingDataError, match="no_such_folder does not exist; set dataset.root"):
        train(cfg)
    kaggle = compose_train(tmp_path / "run2", tmp_path / "data", [*TINY_ANY_DATA, "dataset=ham10000",
                                                                   "backbone.weights=imagenet"])
    with pytest.raises(UserError, match="python -m medimg.download dataset=ham10000"):
        train(kaggle)


def test_a_frozen_phase_on_random_weights_is_warned_about(tmp_path, caplog):
    from medimg.train import check_recipe
    from tests.conftest import settings_of

    with caplog.at_level("WARNING", logger="medimg.train"):
        check_recipe(settings_of(compose_train(tmp_path, tmp_path, [*TINY, "stage=two_stage"])))
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "phase 'head' trains only the head" in warned[0] and "stage=scratch" in warned[0]
    caplog.clear()
    with caplog.at_level("WARNING", logger="medimg.train"):
        check_recipe(settings_of(compose_train(tmp_path, tmp_path, [*TINY, "stage=scratch"])))
        check_recipe(settings_of(compose_train(tmp_path, tmp_path, ["stage=two_stage", "backbone.weights=null",
                                                                    "stage.phases.head.train_blocks=last",
                                                                    "stage.phases.head.feature_cache=false"])))
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
