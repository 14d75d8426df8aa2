"""Corrupt or truncated images in the new sources: a stop with the list, or dropped with a counted warning."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from medimg.data.kaggle import fetch
from medimg.data.sources.ham10000 import KAGGLE
from tests.conftest import dataset_module
from tests.kaggle_fixtures import ARCHIVES, ham10000_zip


@pytest.fixture
def ham_root(tmp_path):
    root = tmp_path / "ham10000"
    (root / "raw").mkdir(parents=True)
    ham10000_zip(root / "raw" / ARCHIVES["ham10000"])
    fetch(KAGGLE, root)  # offline: the archive is already there
    return root


def _dm(root, **kw):
    return dataset_module(root.parent, "ham10000", root=str(root), img_size=16, batch_size=8, num_workers=0,
                          split={"val": 0.15, "test": 0.15, "seed": 42}, **kw)


def _corrupt(ham_root):
    images = sorted((ham_root / "raw" / "extracted" / "HAM10000_images_part_2").glob("*.jpg"))
    truncated, garbage = images[3], images[8]
    truncated.write_bytes(truncated.read_bytes()[:150])
    garbage.write_bytes(b"\x00" * 64)
    return {str(truncated.resolve()), str(garbage.resolve())}


def test_corrupt_images_stop_with_their_list(ham_root):
    bad = _corrupt(ham_root)
    dm = _dm(ham_root)
    with pytest.raises(ValueError) as err:
        dm.setup("fit")
    msg = str(err.value)
    assert "2 image(s) cannot be read" in msg and "skip_bad_files" in msg
    assert all(p in msg for p in bad)


def test_skip_bad_files_drops_them_with_a_counted_warning(ham_root, caplog):
    bad = _corrupt(ham_root)
    dm = _dm(ham_root, skip_bad_files=True)
    with caplog.at_level(logging.WARNING):
        dm.setup("fit")
    assert "dropping 2 unreadable image(s)" in caplog.text
    assert not dm.table["path"].isin(bad).any()
    x, y, i = dm.datasets["train"][0]
    assert x.shape == (3, 16, 16) and int(y) in range(7)


def test_corrupt_image_in_a_csv_source(tmp_path):
    for i in range(12):
        Image.fromarray(np.full((10, 10, 3), i * 20, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "5.png").write_bytes(b"PNG? no")
    (tmp_path / "l.csv").write_text("path,label\n" + "".join(f"{i}.png,{'ab'[i % 2]}\n" for i in range(12)))
    dm = dataset_module(tmp_path, "csv", csv=str(tmp_path / "l.csv"), img_size=8, batch_size=4,
                        split={"val": 0.25, "test": 0.25, "seed": 0})
    with pytest.raises(ValueError, match="5.png"):
        dm.setup("fit")
