"""A user's data folder is read-only to medimg: runs train on it twice in a row and leave it exactly as it was.

medimg's own files about such a folder (split, scan record, image cache) live in ``paths.cache_dir``, keyed by
the folder's path; hidden and system folders inside it are never classes.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medimg.data.sources.folder import folder_table
from medimg.train import train
from tests.conftest import TINY_ANY_DATA, compose_train


def _images(folder: Path, n: int, seed: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(folder / f"{i:03d}.png")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


def _read_only(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _writable(root: Path) -> None:
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.fixture
def flat_folder(tmp_path) -> Path:
    root = tmp_path / "my_images"
    for k, cls in enumerate(("benign", "malignant")):
        _images(root / cls, 24, k)
    _images(root / ".ipynb_checkpoints", 3, 9)  # hidden and system folders hold images too: never classes
    _images(root / "__MACOSX" / "benign", 2, 8)
    _images(root / "benign" / ".thumbnails", 2, 7)
    return root


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["flat", "split_folders"])
def test_a_read_only_folder_trains_twice_and_is_left_as_it_was(layout, flat_folder, tmp_path):
    root = flat_folder
    if layout == "split_folders":
        root = tmp_path / "split"
        for k, split in enumerate(("train", "val", "test")):
            for j, cls in enumerate(("benign", "malignant")):
                _images(root / split / cls, 16 if split == "train" else 6, 10 * k + j)
    before = _snapshot(root)
    _read_only(root)
    try:
        for attempt in ("first", "second"):  # the second run reuses medimg's own files about the folder
            cfg = compose_train(tmp_path / attempt, tmp_path / "data", [
                *TINY_ANY_DATA, "dataset=folder", f"dataset.root={root}", "stage=full", "evaluation.gallery_per_class=0"])
            metrics = train(cfg)
            assert 0 <= metrics["test/auroc"] <= 1
    finally:
        _writable(root)
    assert _snapshot(root) == before, "medimg wrote into the user's folder"
    (work,) = (tmp_path / "data" / "cache").iterdir()
    assert work.name.startswith(f"folder-{root.name}-")
    assert {"medimg_splits.csv", "medimg_scan.json", "cache"} <= {p.name for p in work.iterdir()}


def test_hidden_and_system_folders_are_not_classes(flat_folder):
    table, classes = folder_table(flat_folder)
    assert classes == ["benign", "malignant"]
    assert len(table) == 48 and not table["path"].str.contains("thumbnails|MACOSX|ipynb").any()


def test_another_folder_gets_its_own_files(tmp_path):
    from medimg.data.sources import work_dir
    from tests.conftest import settings_of

    dirs = set()
    for name in ("a", "b"):
        s = settings_of(compose_train(tmp_path, tmp_path / "data", ["dataset=folder", f"dataset.root={tmp_path / name}"]))
        dirs.add(work_dir(s.dataset, s.paths.cache_dir))
    assert len(dirs) == 2 and all(d.parent == tmp_path / "data" / "cache" for d in dirs)
    s = settings_of(compose_train(tmp_path, tmp_path / "data", []))  # a set medimg generates keeps its own folder
    assert work_dir(s.dataset, s.paths.cache_dir) == Path(s.dataset.root)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders anyway")
def test_read_only_is_really_read_only_for_this_user(flat_folder):
    _read_only(flat_folder)
    try:
        with pytest.raises(PermissionError):
            (flat_folder / "probe").write_text("x")
    finally:
        _writable(flat_folder)
