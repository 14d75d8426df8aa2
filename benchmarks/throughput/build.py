"""medimg's own pieces, built from the composed train config as ``python -m medimg.train`` builds them.

The one place where the benchmarks reach into medimg's training API (the command-line runs need none of
it): the config and its settings, the data module, the model set up for a stage's first phase, and what
``auto`` resolves to on this machine (precision, determinism).
"""

from __future__ import annotations

from typing import Any

from . import REPO

CONF_DIR = REPO / "conf"


def compose(overrides: list[str]) -> dict[str, Any]:
    """The train config with ``overrides``, resolved into plain dicts (no run folder: nothing is written)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import OmegaConf

    unused_run_dir = REPO / "outputs" / "unused"
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("train", overrides=[*overrides, f"paths.output_dir={unused_run_dir}"])
    return OmegaConf.to_container(cfg, resolve=True)


def settings(c: dict[str, Any]):
    """(train settings, runtime) of the composed config ``c``: what every ``auto`` means on this machine."""
    from medimg.config.training import train_settings
    from medimg.train import runtime_of

    s = train_settings(c)
    return s, runtime_of(s)


def preprocess(c: dict[str, Any]):
    """The run's preprocessing for ``c`` (size, resampling, normalisation; null keys from the backbone)."""
    from medimg.training.model import run_preprocess

    return run_preprocess(settings(c)[0].dataset)


def data_module(c: dict[str, Any]):
    """medimg's data module for ``c``, its data generated or scanned and cached, set up for fitting."""
    from medimg.data.datamodule import MedImageDataModule
    from medimg.data.sources import work_dir
    from medimg.training.model import run_preprocess

    s, rt = settings(c)
    dm = MedImageDataModule(s.dataset, work_dir(s.dataset, s.paths.cache_dir), rt.pin_memory, s.seed,
                            run_preprocess(s.dataset), batch_augment=rt.batch_augment)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def first_phase(c: dict[str, Any]) -> tuple[str, Any, float]:
    """(name, train_blocks, lr) of the stage's first phase: the one every measurement trains."""
    name, phase = next(iter(c["stage"]["phases"].items()))
    return name, phase["train_blocks"], float(phase["lr"])


def classifier(c: dict[str, Any], dm):
    """medimg's model for ``c`` and the data of ``dm``, its random initialisation seeded by ``c``'s seed."""
    import lightning as L

    from medimg.training.model import build_model

    s, rt = settings(c)
    L.seed_everything(s.seed, workers=True, verbose=False)
    return build_model(s, rt, dm, None)


def first_phase_model(c: dict[str, Any], dm):
    """``classifier`` in train mode, with the blocks of the stage's first phase trainable."""
    model = classifier(c, dm)
    name, blocks, lr = first_phase(c)
    model.set_phase(name, blocks, lr, 1)
    return model.train()


def trainer_settings(c: dict[str, Any]) -> tuple[str, bool]:
    """(precision, deterministic) as medimg's trainer resolves them for ``c`` (``auto`` included)."""
    _, rt = settings(c)
    return rt.precision, bool(rt.deterministic)


def transforms(c: dict[str, Any]):
    """(train, eval) transforms of ``c``'s data set, as medimg's data module builds them."""
    from medimg.data.transforms import train_transform

    ds, pre = settings(c)[0].dataset, preprocess(c)
    augment = {k: getattr(ds, k) for k in ("augment", "hflip", "vflip", "rotation", "color_jitter")}
    train = train_transform(pre.img_size, ds.crop_scale, pre.mean, pre.std, interpolation=pre.interpolation,
                            **augment)
    return train, pre.transform()
