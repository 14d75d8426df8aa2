"""dataset=csv: a label file with paths relative to it, optional group and split columns; clear errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from medimg.data.sources.csv_source import csv_table
from tests.conftest import compose_train, datamodule_of


def _images(folder, names, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in names:
        (folder / n).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(folder / n)


def _labels_csv(root, n_patients=24, per_patient=3, extra_columns=None):
    """root/labels.csv with columns file,diagnosis,patient; 3 classes; images under root/img/."""
    rows = ["file,diagnosis,patient" + ("," + extra_columns[0] if extra_columns else "")]
    names = []
    for p in range(n_patients):
        label = ("benign", "malignant", "other")[p % 3]
        for k in range(per_patient):
            name = f"img/p{p:02d}_{k}.png"
            names.append(name)
            extra = "," + extra_columns[1](p, k) if extra_columns else ""
            rows.append(f"{name},{label},P{p:03d}{extra}")
    _images(root, names)
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def _datamodule(tmp_path, *overrides):
    cfg = compose_train(tmp_path / "run", tmp_path / "data", ["dataset=csv", "dataset.img_size=16",
                                                               "dataset.num_workers=0", *overrides])
    return datamodule_of(cfg, setup=False)


def test_csv_relative_paths_and_grouped_split(tmp_path):
    csv = _labels_csv(tmp_path / "set")
    dm = _datamodule(tmp_path, f"dataset.csv={csv}", "dataset.path_column=file",
                       "dataset.label_column=diagnosis", "dataset.group_column=patient")
    dm.setup("fit")
    t = dm.table
    assert dm.class_names == ["benign", "malignant", "other"] and len(t) == 72
    assert t["path"].str.startswith(str((tmp_path / "set" / "img").resolve())).all()
    assert (t.groupby("group")["split"].nunique() == 1).all(), "a patient is in two splits"
    assert set(t["split"]) == {"train", "val", "test"}
    assert (dm.work_dir / "medimg_splits.csv").is_file() and dm.work_dir.parent == tmp_path / "data" / "cache"
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["img", "labels.csv"]  # the user's folder untouched


def test_csv_split_column_and_given_classes(tmp_path):
    def split(p, k):
        return "Test" if p >= 18 else ("validation" if p >= 15 else "train")

    csv = _labels_csv(tmp_path / "set", extra_columns=("fold", split))
    table, classes = csv_table(csv, "file", "diagnosis", group_column="patient", split_column="fold",
                               classes=["other", "benign", "malignant"])
    assert classes == ["other", "benign", "malignant"]  # the given order is the index order
    assert table["split"].value_counts().to_dict() == {"train": 45, "test": 18, "val": 9}


def test_csv_unknown_label_is_named(tmp_path):
    csv = _labels_csv(tmp_path / "set")
    with pytest.raises(ValueError) as err:
        csv_table(csv, "file", "diagnosis", classes=["benign", "malignant"])
    assert "'other'" in str(err.value) and "dataset.classes" in str(err.value) and "line" in str(err.value)


def test_csv_empty_class_is_named(tmp_path):
    csv = _labels_csv(tmp_path / "set")
    with pytest.raises(ValueError, match=r"\['melanoma'\].*no rows"):
        csv_table(csv, "file", "diagnosis", classes=["benign", "malignant", "other", "melanoma"])


def test_csv_missing_file_is_named(tmp_path):
    csv = _labels_csv(tmp_path / "set")
    (tmp_path / "set" / "img" / "p03_1.png").unlink()
    with pytest.raises(FileNotFoundError) as err:
        csv_table(csv, "file", "diagnosis")
    assert "p03_1.png" in str(err.value) and "line 12" in str(err.value)


def test_csv_missing_column_names_the_setting(tmp_path):
    csv = _labels_csv(tmp_path / "set")
    with pytest.raises(ValueError) as err:
        csv_table(csv)  # default column names path,label are not in this file
    assert "dataset.path_column" in str(err.value) and "'file'" in str(err.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        csv_table(tmp_path / "nope.csv")


def test_csv_empty_label_cell_and_single_class(tmp_path):
    _images(tmp_path, ["a.png", "b.png"])
    (tmp_path / "l.csv").write_text("path,label\na.png,x\nb.png,\n")
    with pytest.raises(ValueError, match="empty 'label' cells on lines \\[3\\]"):
        csv_table(tmp_path / "l.csv")
    (tmp_path / "l.csv").write_text("path,label\na.png,x\nb.png,x\n")
    with pytest.raises(ValueError, match="single class"):
        csv_table(tmp_path / "l.csv")


def test_csv_numeric_labels_sort_as_numbers(tmp_path):
    names = [f"{i}.png" for i in range(12)]
    _images(tmp_path, names)
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{n},{i % 12}\n" for i, n in enumerate(names)))
    _, classes = csv_table(tmp_path / "l.csv")
    assert classes == [str(i) for i in range(12)]
