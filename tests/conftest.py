"""Shared test helpers: composing the train config for tiny CPU runs on a shared synthetic data folder."""

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
]


def compose_train(out_dir: Path, data_dir: Path, overrides: list[str] = ()):
    """The train config as Hydra composes it, with run and data folders pointed at test folders."""
    from hydra import compose, initialize_config_dir

    from medimg.train import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[f"paths.root_dir={out_dir}", f"paths.output_dir={out_dir}", f"paths.data_dir={data_dir}",
                       *overrides],
        )


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
