"""Every option of every config group composes; unknown options fail with Hydra's list of choices."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra.errors import ConfigCompositionException

from medimg.cli import CONF_DIR
from tests.conftest import compose_train, settings_of

GROUPS = ["dataset", "backbone", "stage", "optim", "model", "distill", "trainer", "logger", "callbacks",
          "calibration", "evaluation", "experiment", "hparams_search", "debug", "paths", "hydra"]


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (Path(CONF_DIR) / group).glob("*.yaml") if not p.stem.startswith("_"))


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group, tmp_path):
    options = _options(group)
    assert options, f"config group {group} has no options"
    for option in options:
        extra = ["dataset.root=/some/images"] if option in ("folder",) and group == "dataset" else []
        extra += ["dataset.csv=/some/labels.csv"] if option == "csv" and group == "dataset" else []
        extra += ["backbone.name=resnet18"] if option == "timm" and group == "backbone" else []
        extra += ["distill.teacher=/some/run"] if option == "distill" and group == "stage" else []
        cfg = compose_train(tmp_path, tmp_path / "data", [f"{group}={option}", *extra])
        # every key the code reads is in the YAML, no unknown key, every value valid: the typed settings
        s = settings_of(cfg)
        assert s.seed == cfg.seed
        for phase in s.stage.phases.values():
            assert phase.epochs >= 1 and phase.lr > 0


def test_unknown_option_lists_the_choices(tmp_path):
    with pytest.raises(ConfigCompositionException) as err:
        compose_train(tmp_path, tmp_path, ["backbone=resnet9000"])
    assert "resnet18" in str(err.value) and "resnet50" in str(err.value)


def test_defaults_are_the_seed_recipe(tmp_path):
    cfg = compose_train(tmp_path, tmp_path)
    assert cfg.dataset.name == "synthetic" and cfg.backbone.name == "resnet18" and cfg.stage.name == "two_stage"
    head, ft = cfg.stage.phases.head, cfg.stage.phases.finetune
    assert (head.epochs, head.lr, head.patience, list(head.train_blocks)) == (20, 1e-3, 3, [])
    assert (ft.epochs, ft.lr, ft.patience, list(ft.train_blocks)) == (10, 1e-4, 2, ["layer4"])
    assert cfg.seed == 42 and cfg.optim.optimizer == "adam" and cfg.optim.weight_decay == 1e-4
    assert cfg.backbone.weights == "imagenet" and cfg.backbone.dropout == 0.2
    assert cfg.monitor == "val/auroc" and cfg.dataset.class_weights is True


def test_every_key_is_commented():
    """Configs are the interface: each key of the group files carries a one-line comment."""
    uncommented = []
    for group in ("dataset", "backbone", "model", "trainer", "callbacks", "paths"):
        for path in (Path(CONF_DIR) / group).glob("*.yaml"):
            for line in path.read_text().splitlines():
                s = line.strip()
                top_level_key = line and not line.startswith(" ") and ":" in s and not s.startswith(("#", "-"))
                if top_level_key and s.split(":")[0] != "defaults" and "#" not in s and not s.endswith(":"):
                    uncommented.append(f"{path.name}: {s}")
    assert not uncommented, uncommented


def test_the_precision_names_are_lightnings():
    import typing

    from lightning.fabric import connector

    from medimg.names import PRECISIONS

    lightning = [*typing.get_args(connector._PRECISION_INPUT_STR), *typing.get_args(connector._PRECISION_INPUT_STR_ALIAS)]
    assert sorted(PRECISIONS) == sorted(lightning)


def test_the_name_tables_refuse_a_name_listed_in_one_place_only():
    from medimg.names import same_names

    same_names({"a": 1, "b": 2}, ("a", "b"), "letters")
    same_names({"b": 1, "a": 2}, ("a", "b"), "letters")  # the order is free
    with pytest.raises(RuntimeError, match="letters: the table has"):
        same_names({"a": 1}, ("a", "b"), "letters")


def test_reading_a_config_builds_no_model(monkeypatch, tmp_path):
    """Settings are read without timm or data code: the backbone's preprocessing is resolved where the model is."""
    from medimg.models import backbones

    def no_timm(*args, **kwargs):
        raise AssertionError("reading the settings asked timm for a pretrained config")

    monkeypatch.setattr(backbones, "pretrained_preprocess", no_timm)
    s = settings_of(compose_train(tmp_path, tmp_path / "data", ["dataset=folder", "dataset.root=/images"]))
    assert s.dataset.mean is None and s.dataset.preprocess_from == "resnet18"


def test_a_stage_file_may_leave_out_the_optional_phase_keys_but_not_misspell_one():
    from medimg.config.schema import read
    from medimg.config.training import PhaseSettings, StageSettings
    from medimg.errors import ConfigError

    stage = read(StageSettings, {"name": "mine", "phases": {"only": {"train_blocks": "all", "epochs": 3, "lr": 0.01}}},
                 "stage")
    ph = stage.phases["only"]
    assert isinstance(ph, PhaseSettings) and ph.epochs == 3 and ph.patience is None and ph.feature_cache is False
    assert (ph.min_steps, ph.patience_min_steps, ph.warmup_steps, ph.lr_decay) == (0, 0, 0, 1.0)
    with pytest.raises(ConfigError, match=r"stage.phases.only.warmup_step \(did you mean stage.phases.only.warmup_steps\?\)"):
        read(StageSettings, {"name": "mine", "phases": {"only": {"train_blocks": "all", "epochs": 3, "lr": 0.01,
                                                                 "warmup_step": 5}}}, "stage")
    with pytest.raises(ConfigError, match="config keys missing: stage.phases.only.lr"):
        read(StageSettings, {"name": "mine", "phases": {"only": {"train_blocks": "all", "epochs": 3}}}, "stage")
