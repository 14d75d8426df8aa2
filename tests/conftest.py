"""Shared test helpers: composing the train config for tiny CPU runs on a shared synthetic data folder, and
building the model and data module from it (so every default comes from the YAML, as in a real run)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("MPLBACKEND", "Agg")

# A tiny, fast recipe: 32 px synthetic lesions, random-init ResNet18 (default two_stage recipe, one epoch per
# phase), no worker processes, no progress bars.
TINY = [
    "backbone.weights=null",
    "dataset.num_images=160",
    "dataset.img_size=32",
    "dataset.num_workers=0",
    "dataset.batch_size=32",
    "trainer.enable_progress_bar=false",
    "trainer.max_epochs=1",
    "logger=csv",
    "evaluation.figures=false",  # the report's figures cost seconds a run; the tests of figures turn them on
]
TINY_ANY_DATA = [a for a in TINY if not a.startswith("dataset.num_images")]  # for data sets other than synthetic


def compose_train(out_dir: Path, data_dir: Path, overrides: list[str] = ()):
    """The train config as Hydra composes it, with run and data folders pointed at test folders."""
    from hydra import compose, initialize_config_dir

    from medimg.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.root_dir={out_dir}", f"paths.output_dir={out_dir}", f"paths.data_dir={data_dir}",
                       *overrides],
        )


def settings_of(cfg):
    """The typed settings of a composed train config."""
    from omegaconf import OmegaConf

    from medimg.config.training import train_settings

    return train_settings(OmegaConf.to_container(cfg, resolve=True))


def datamodule_of(cfg, setup: bool = True):
    """The data module a run with ``cfg`` builds (set up unless ``setup=False``)."""
    from medimg.data.datamodule import MedImageDataModule
    from medimg.data.sources import work_dir
    from medimg.training.model import run_preprocess

    s = settings_of(cfg)
    dm = MedImageDataModule(s.dataset, work_dir(s.dataset, s.paths.cache_dir), False, s.seed, run_preprocess(s.dataset))
    if setup:
        dm.prepare_data()
        dm.setup("fit")
    return dm


def make_classifier(class_names, *overrides: str, tmp: Path | None = None, **arguments):
    """An ImageClassifier as a run with the default config (plus ``overrides``) builds it, on the CPU in fp32
    without channels_last; ``arguments`` replace constructor arguments (e.g. ``nan_check_every=1``)."""
    from medimg.config.runtime import resolve_runtime
    from medimg.training.model import classifier_of

    where = tmp or Path("/nonexistent")
    s = settings_of(compose_train(where, where / "data", ["backbone.weights=null", *overrides]))
    rt = resolve_runtime("cpu", "32", "auto", False, "auto", False)
    model = classifier_of(s, rt, class_names, None, s.backbone.weights)
    if not arguments:
        return model
    from medimg.models.classifier import ImageClassifier

    return ImageClassifier(**{**dict(model.hparams), **arguments})


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> Path:
    """One data folder for the whole session: the synthetic set is generated there once."""
    return tmp_path_factory.mktemp("data")


@pytest.fixture
def tiny_cfg(tmp_path, data_dir):
    """Factory: ``tiny_cfg(*overrides)`` -> composed config for a tiny run writing into tmp_path/run."""

    def make(*overrides: str):
        return compose_train(tmp_path / "run", data_dir, [*TINY, *overrides])

    return make


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory, data_dir) -> Path:
    """A trained checkpoint (the TINY recipe, stage=full, one epoch), shared by the whole session.

    Read it, never modify it: copy it first (``torch.load`` / ``torch.save``) to change its contents.
    """
    from medimg.train import train

    run = tmp_path_factory.mktemp("tiny_run")
    train(compose_train(run, data_dir, [*TINY, "stage=full"]))
    ckpt = run / "checkpoints" / "best.ckpt"
    assert ckpt.is_file(), f"the tiny run wrote no {ckpt}"
    return ckpt


def dataset_module(tmp: Path, dataset: str = "folder", **keys):
    """A MedImageDataModule (not set up) for the ``dataset`` group with ``keys`` set on top of its YAML
    defaults; medimg's own files go under ``tmp/cache`` (``paths.cache_dir``)."""
    from omegaconf import OmegaConf

    from medimg.data.datamodule import MedImageDataModule
    from medimg.data.sources import work_dir

    extra = ["dataset.root=/unset"] if dataset == "folder" else []
    extra += ["dataset.csv=/unset"] if dataset == "csv" else []
    cfg = compose_train(tmp / "run", tmp / "data", [f"dataset={dataset}", f"paths.cache_dir={tmp / 'cache'}", *extra])
    for key, value in keys.items():
        OmegaConf.update(cfg, f"dataset.{key}", value, force_add=True)
    from medimg.training.model import run_preprocess

    s = settings_of(cfg)
    return MedImageDataModule(s.dataset, work_dir(s.dataset, s.paths.cache_dir), False, s.seed, run_preprocess(s.dataset))


def command_config(name: str, out_dir: Path, *overrides: str) -> dict:
    """conf/<name>.yaml (predict, export, evaluate, explain ...) composed and resolved as the command would,
    with its output folder at ``out_dir``: a plain dict."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from medimg.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name=name, overrides=[f"paths.root_dir={out_dir}", f"paths.output_dir={out_dir}",
                                                   *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


class Interrupted(Exception):
    """Raised by ``interrupt_at`` to stop a run the way a crash would, right after an epoch's checkpoint."""


def interrupt_at(monkeypatch, phase: str, epoch: int) -> None:
    """Make the next run stop when ``phase`` starts ``epoch`` (just after last.ckpt is written there)."""
    from medimg.training import trainer as trainer_module

    original = trainer_module.EpochStartCheckpoint.on_train_epoch_start

    def stop(self, trainer, pl_module):
        original(self, trainer, pl_module)
        if pl_module.phase["name"] == phase and trainer.current_epoch == epoch:
            raise Interrupted(f"stopped at the start of {phase} epoch {epoch}")

    monkeypatch.setattr(trainer_module.EpochStartCheckpoint, "on_train_epoch_start", stop)


def calibration_of(method: str, **keys):
    """The ``calibration`` settings of ``calibration=<method>`` (its YAML) with ``keys`` set on top."""
    from medimg.config.evaluation import CalibrationSettings
    from medimg.config.schema import read

    cfg = compose_train(Path("/nonexistent"), Path("/nonexistent"), [f"calibration={method}"])
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg.calibration, resolve=True)
    return read(CalibrationSettings, {**node, **keys}, "calibration")
