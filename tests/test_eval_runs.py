"""Run folders: the checkpoint's run, the run's data set (with +dataset.<key> adjustments), class checks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from omegaconf import OmegaConf

from medimg.evaluate import dataset_config, own_dataset
from medimg.evaluation.runs import dataset_of_run, evaluation_dir
from medimg.inference import ClassMismatchError, run_dir_of
from medimg.inference import check_same_classes as check_classes


def _run_with_config(tmp_path):
    run = tmp_path / "run"
    (run / ".hydra").mkdir(parents=True)
    (run / "checkpoints").mkdir()
    saved = {"paths": {"data_dir": "/old/data"},
             "dataset": {"name": "synthetic", "source": "synthetic", "root": "${paths.data_dir}/synthetic/n8",
                         "eval_batch_size": 128}}
    OmegaConf.save(OmegaConf.create(saved), run / ".hydra" / "config.yaml")
    return run


def test_dataset_of_run_resolves_against_current_paths(tmp_path):
    run = _run_with_config(tmp_path)
    assert run_dir_of(run / "checkpoints" / "best.ckpt") == run.resolve()
    d = dataset_of_run(run, OmegaConf.create({"data_dir": "/new/data"}))
    assert d["root"] == "/new/data/synthetic/n8"


def test_dataset_config_choices(tmp_path):
    run = _run_with_config(tmp_path)
    cfg = OmegaConf.create({"paths": {"data_dir": "/new/data"}})
    bare = SimpleNamespace(state={})  # a checkpoint that records no settings
    own = own_dataset(run, cfg, bare)
    assert dataset_config(None, own, run, cfg)["eval_batch_size"] == 128
    adjusted = dataset_config({"eval_batch_size": 8}, own, run, cfg)  # +dataset.eval_batch_size=8
    assert adjusted["eval_batch_size"] == 8 and adjusted["root"] == "/new/data/synthetic/n8"
    other = {"name": "folder", "source": "folder", "root": "/x"}
    assert dataset_config(other, own, run, cfg) == other  # dataset=folder ...
    assert own_dataset(tmp_path, cfg, bare) is None
    with pytest.raises(FileNotFoundError, match="pass dataset=<name>"):
        dataset_config(None, None, tmp_path, cfg)
    recorded = SimpleNamespace(state={"settings": {"dataset": {"name": "csv", "root": "/r"}}})
    own = own_dataset(tmp_path, cfg, recorded)
    assert dataset_config(None, own, tmp_path, cfg) == {"name": "csv", "root": "/r"}


def test_class_check_lists_both():
    check_classes(["a", "b"], ["a", "b"], "m.ckpt", "d")
    with pytest.raises(ClassMismatchError, match=r"\['a', 'b'\].*\['b', 'a'\].*another order"):
        check_classes(["a", "b"], ["b", "a"], "m.ckpt", "d")


def test_two_evaluations_in_the_same_second_get_their_own_folders(tmp_path):
    first = evaluation_dir(tmp_path, "synthetic", "test", "abc")
    first.mkdir(parents=True)
    second = evaluation_dir(tmp_path, "synthetic", "test", "abc")
    assert second != first and not second.exists()
    if second.name.startswith(first.name):  # the same second: numbered
        assert second.name == f"{first.name}-2"
