"""Data table, splits and folder source: stratified/grouped splits saved once, clear errors on bad folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medimg.data.datamodule import class_weights_from_counts
from medimg.data.sources.folder import folder_table
from medimg.data.splits import assign_splits, load_or_make_splits
from medimg.data.table import make_table
from tests.conftest import dataset_module


def _write_images(folder, n, size=8):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((size, size, 3), i * 7 % 255, np.uint8)).save(folder / f"{i}.png")


def test_class_weights_are_inverse_counts_summing_to_num_classes():
    w = class_weights_from_counts([600, 300, 100])
    assert w.sum().item() == pytest.approx(3.0)
    assert (w[2] / w[0]).item() == pytest.approx(6.0) and (w[1] / w[0]).item() == pytest.approx(2.0)
    with pytest.raises(ValueError, match="no training images"):
        class_weights_from_counts([3, 0])


def test_splits_are_stratified_grouped_and_reused(tmp_path):
    rng = np.random.default_rng(0)
    labels = ["a"] * 600 + ["b"] * 300 + ["c"] * 100
    groups = [f"g{i // 3}" for i in range(1000)]  # three images per group
    df = make_table([f"/x/{i}.png" for i in range(1000)], labels, groups=groups)
    df = df.sample(frac=1, random_state=1).reset_index(drop=True)
    out = assign_splits(df, val=0.15, test=0.15, seed=42)
    frac = out["split"].value_counts(normalize=True)
    assert frac["test"] == pytest.approx(0.15, abs=0.03) and frac["val"] == pytest.approx(0.15, abs=0.03)
    for split in ("train", "val", "test"):
        props = out[out["split"] == split]["label"].value_counts(normalize=True)
        assert props["a"] == pytest.approx(0.6, abs=0.05) and props["c"] == pytest.approx(0.1, abs=0.04)
    assert (out.groupby("group")["split"].nunique() == 1).all(), "a group landed in two splits"

    csv = tmp_path / "splits.csv"
    first = load_or_make_splits(df, csv, 0.15, 0.15, 42)
    csv_bytes = csv.read_bytes()
    again = load_or_make_splits(df.sample(frac=1, random_state=rng.integers(100)), csv, 0.15, 0.15, 42)
    assert csv.read_bytes() == csv_bytes
    assert dict(zip(first.path, first.split)) == dict(zip(again.path, again.split))
    changed = load_or_make_splits(df, csv, 0.2, 0.15, 42)  # other fractions: a new split is made and saved
    assert csv.read_bytes() != csv_bytes and (changed["split"] == "val").mean() == pytest.approx(0.2, abs=0.03)


@pytest.mark.parametrize("val, test", [(0.05, 0.75), (0.1, 0.8), (0.15, 0.15)])
def test_split_fractions_above_one_half_are_held_out_too(val, test):
    """A test fraction above one half used to give one of two folds (0.5) whatever was asked."""
    labels = ["a"] * 372 + ["b"] * 108 + ["c"] * 72 + ["d"] * 48
    out = assign_splits(make_table([f"/x/{i}.png" for i in range(600)], labels), val=val, test=test, seed=42)
    frac = out["split"].value_counts(normalize=True)
    assert frac["test"] == pytest.approx(test, abs=0.02) and frac["val"] == pytest.approx(val, abs=0.02)
    assert (out[out["split"] == "test"]["label"].value_counts(normalize=True)["a"]) == pytest.approx(0.62, abs=0.02)


def test_a_split_far_from_the_asked_fraction_is_reported(caplog):
    df = make_table([f"/x/{i}.png" for i in range(200)], ["a"] * 100 + ["b"] * 100)
    out = assign_splits(df, val=0.15, test=0.4, seed=0)  # 1/0.4 = 2.5 folds: 2, so half the images
    assert (out["split"] == "test").mean() == pytest.approx(0.5)
    assert "dataset.split.test=0.4 holds out 0.500" in caplog.text


def test_a_fraction_is_read_against_the_images_it_is_carved_from(tmp_path, caplog):
    """val=0.2 of 40 official training images is 8 of them: no report, though 8 is 0.15 of all 52 images."""
    for split, n in (("train", 20), ("test", 6)):
        for cls in ("cat", "dog"):
            _write_images(tmp_path / split / cls, n)
    out = assign_splits(folder_table(tmp_path)[0], val=0.2, test=0.15, seed=0)
    assert (out["split"] == "val").sum() == 8 and "holds out" not in caplog.text


def test_official_split_folders_are_kept(tmp_path):
    for split, n in (("train", 20), ("test", 6)):
        for cls in ("cat", "dog"):
            _write_images(tmp_path / split / cls, n)
    df, classes = folder_table(tmp_path)
    assert classes == ["cat", "dog"]
    out = assign_splits(df, val=0.2, test=0.15, seed=0)
    assert (out["split"] == "test").sum() == 12  # the official test split, untouched
    assert (out["split"] == "val").sum() == pytest.approx(8, abs=2)


def test_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        folder_table(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no class folders"):
        folder_table(tmp_path / "empty")
    _write_images(tmp_path / "some" / "a", 3)
    (tmp_path / "some" / "b").mkdir()
    with pytest.raises(ValueError, match=r"\['b'\].*hold no images"):
        folder_table(tmp_path / "some")


def test_too_few_images_for_the_split(tmp_path):
    _write_images(tmp_path / "few" / "a", 30)
    _write_images(tmp_path / "few" / "b", 2)
    dm = dataset_module(tmp_path, root=str(tmp_path / "few"), img_size=8, batch_size=4,
                        split={"val": 0.15, "test": 0.15, "seed": 0})
    with pytest.raises(ValueError, match=r"fewer images than a 15% hold-out needs"):
        dm.setup()


def test_datamodule_yields_normalised_batches_and_takes_classes_from_data(tmp_path):
    for cls in ("x", "y", "z"):
        _write_images(tmp_path / "d" / cls, 20, size=12)
    dm = dataset_module(tmp_path, root=str(tmp_path / "d"), img_size=8, batch_size=4, num_workers=0,
                        split={"val": 0.2, "test": 0.2, "seed": 0})
    dm.setup()
    assert dm.class_names == ["x", "y", "z"] and dm.num_classes == 3
    x, y, idx = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 3, 8, 8) and x.dtype.is_floating_point and y.max() < 3
    assert isinstance(dm.split_table("test"), pd.DataFrame) and len(dm.split_table("test")) == 12


def test_loader_workers_start_with_a_standard_method_inside_a_joblib_worker(monkeypatch):
    import multiprocessing

    from medimg.data.workers import worker_context

    assert worker_context(0) is None
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "loky")
    assert worker_context(2) in ("fork", "spawn")
    monkeypatch.setattr(multiprocessing, "get_start_method", lambda allow_none=False: "fork")
    assert worker_context(2) is None
