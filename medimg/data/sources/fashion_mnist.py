"""Fashion-MNIST (Kaggle ``zalando-research/fashionmnist``): 10 clothing classes, 28x28 grayscale.

The archive holds ``fashion-mnist_train.csv`` / ``fashion-mnist_test.csv`` (``label,pixel1..pixel784``)
and the original idx files (``train-images-idx3-ubyte`` ..., gzipped in the original release). The CSVs are
read when present, the idx files otherwise. The images are written once as PNGs under
``<root>/images/{train,test}/<class>/`` (into a temporary folder renamed when complete), so the data set is
an ordinary image folder from then on. Validation is carved out of train.
"""

from __future__ import annotations

import gzip
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from medimg.data.kaggle import KaggleSet, extracted_dir
from medimg.data.sources.folder import folder_table
from medimg.data.sources.locate import all_files, find_file
from medimg.errors import DataError, MissingDataError
from medimg.files import temp_folder

# label index -> class name (folder-safe versions of T-shirt/top, ..., Ankle boot)
CLASSES = ("T-shirt_top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
           "Ankle_boot")
CSV_FILES = {"train": "fashion-mnist_train.csv", "test": "fashion-mnist_test.csv"}
IDX_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
             "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
SIDE = 28


def locate(extracted: Path) -> dict[str, tuple[Path, ...]]:
    """``{split: (csv,)}`` or ``{split: (images idx, labels idx)}``; FileNotFoundError naming what is missing."""
    files = all_files(extracted)
    csvs = {s: find_file(extracted, n, files=files) for s, n in CSV_FILES.items()}
    if all(csvs.values()):
        return {s: (p,) for s, p in csvs.items()}
    idx = {s: tuple(find_file(extracted, n, n + ".gz", files=files) for n in names) for s, names in IDX_FILES.items()}
    if all(all(v) for v in idx.values()):
        return idx
    raise MissingDataError(f"neither {list(CSV_FILES.values())} nor the idx files "
                            f"{[n for v in IDX_FILES.values() for n in v]} (optionally .gz) are in {extracted}")


def read_csv_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``label,pixel1..pixel784`` rows -> (uint8 images [N, 28, 28], int labels [N])."""
    df = pd.read_csv(path)
    if "label" not in df.columns or df.shape[1] != 1 + SIDE * SIDE:
        raise DataError(f"{path} should have the columns label,pixel1..pixel{SIDE * SIDE}; "
                         f"it has {df.shape[1]} columns starting {list(df.columns[:3])}")
    pixels = df.drop(columns="label").to_numpy()
    return pixels.reshape(-1, SIDE, SIDE).clip(0, 255).astype(np.uint8), df["label"].to_numpy(int)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (plain or .gz) as a uint8 array of the shape its header gives."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte idx file")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: header says {shape}, holds {arr.size} values")
    return arr.reshape(shape)


def read_split(files: tuple[Path, ...]) -> tuple[np.ndarray, np.ndarray]:
    if len(files) == 1:
        return read_csv_split(files[0])
    images, labels = read_idx(files[0]), read_idx(files[1])
    if len(images) != len(labels):
        raise DataError(f"{files[0]} holds {len(images)} images but {files[1]} {len(labels)} labels")
    return images, labels.astype(int)


def write_images(extracted: Path, images_dir: Path) -> None:
    """Write every image as ``images_dir/<split>/<class>/<split>_<index>.png``, once (atomic rename)."""
    if images_dir.is_dir():
        return
    images_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_folder(f".{images_dir.name}.tmp-", images_dir.parent)
    try:
        for split, files in locate(extracted).items():
            images, labels = read_split(files)
            bad = sorted(set(np.unique(labels).tolist()) - set(range(len(CLASSES))))
            if bad:
                raise DataError(f"{files[-1]} has labels {bad}; Fashion-MNIST labels are 0..{len(CLASSES) - 1}")
            for c in CLASSES:
                (tmp / split / c).mkdir(parents=True)
            for i, (img, lab) in enumerate(zip(images, labels)):
                Image.fromarray(img, "L").save(tmp / split / CLASSES[lab] / f"{split}_{i:05d}.png")
        try:
            os.replace(tmp, images_dir)
        except OSError:
            if not images_dir.is_dir():  # else another run wrote the same images first
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # gone after the rename; a leftover if another run was faster


def fashion_mnist_table(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """The PNG folder as a table (written on first use); classes in label order, so index = original label."""
    root = Path(root)
    extracted = extracted_dir(KAGGLE, root)
    write_images(extracted, root / "images")
    df, _ = folder_table(root / "images")
    return df, list(CLASSES)


KAGGLE = KaggleSet(name="fashion_mnist", slug="zalando-research/fashionmnist", check=locate)
