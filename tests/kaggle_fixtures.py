"""Builders of tiny archives in the exact layout of the Kaggle releases (real file and column names), and a
stand-in for the Kaggle client that hands them out. Used by the tests; not a test module itself."""

from __future__ import annotations

import gzip
import io
import shutil
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

HAM_COLUMNS = "lesion_id,image_id,dx,dx_type,age,sex,localization"
# lesions per diagnosis (nv about two thirds, as in the real set)
HAM_LESIONS = {"akiec": 8, "bcc": 8, "bkl": 9, "df": 7, "mel": 9, "nv": 60, "vasc": 7}
HAM_COLOURS = {"akiec": (200, 90, 90), "bcc": (180, 120, 160), "bkl": (150, 110, 70), "df": (120, 80, 60),
               "mel": (60, 40, 30), "nv": (140, 90, 60), "vasc": (190, 40, 60)}


def jpeg_bytes(rgb, size=(24, 18), mode="RGB", seed=0) -> bytes:
    """A small JPEG: a flat colour plus noise (``rgb`` is an int for grayscale)."""
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    base = np.array(rgb, dtype=np.float32)
    arr = np.clip(base + rng.normal(0, 12, shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def ham10000_zip(path: Path, images_per_lesion=(1, 3), seed: int = 0) -> dict[str, list[str]]:
    """``skin-cancer-mnist-ham10000.zip`` in miniature; returns {lesion_id: [image_id, ...]}.

    Layout as published: HAM10000_metadata.csv, HAM10000_images_part_{1,2}/ISIC_*.jpg, the same folders again
    in lower case, and hmnist_*.csv thumbnails.
    """
    rng = np.random.default_rng(seed)
    rows, lesions, n_img, n_les = [], {}, 0, 0
    for dx, count in HAM_LESIONS.items():
        for _ in range(count):
            lesion = f"HAM_{n_les:07d}"
            n_les += 1
            lesions[lesion] = []
            for _ in range(int(rng.integers(images_per_lesion[0], images_per_lesion[1] + 1))):
                image_id = f"ISIC_{24306 + n_img:07d}"
                n_img += 1
                lesions[lesion].append(image_id)
                rows.append((lesion, image_id, dx))
    with zipfile.ZipFile(path, "w") as zf:
        meta = [HAM_COLUMNS] + [f"{les},{img},{dx},histo,45.0,male,back" for les, img, dx in rows]
        zf.writestr("HAM10000_metadata.csv", "\n".join(meta) + "\n")
        for k, (_, image_id, dx) in enumerate(rows):
            part = 1 if k < len(rows) // 2 else 2
            data = jpeg_bytes(HAM_COLOURS[dx], seed=k)
            zf.writestr(f"HAM10000_images_part_{part}/{image_id}.jpg", data)
            zf.writestr(f"ham10000_images_part_{part}/{image_id}.jpg", data)
        for name, width in (("hmnist_28_28_L.csv", 28 * 28), ("hmnist_8_8_RGB.csv", 8 * 8 * 3)):
            header = ",".join(f"pixel{i:04d}" for i in range(width)) + ",label"
            zf.writestr(name, header + "\n" + ",".join(["0"] * width) + ",4\n")
    return lesions


def chest_xray_zip(path: Path, seed: int = 0) -> None:
    """``chest-xray-pneumonia.zip`` in miniature: chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg,
    nested again under chest_xray/chest_xray/, plus macOS resource forks under chest_xray/__MACOSX/."""
    rng = np.random.default_rng(seed)
    files: dict[str, bytes] = {}
    person, study = 1, 115

    def normal(split, n_patients):
        nonlocal study
        for p in range(n_patients):
            prefix = "NORMAL2-IM" if p % 3 == 0 else "IM"
            for k in range(1, int(rng.integers(1, 3)) + 1):
                size = (int(rng.integers(20, 33)), int(rng.integers(20, 33)))
                files[f"{split}/NORMAL/{prefix}-{study:04d}-{k:04d}.jpeg"] = jpeg_bytes(90, size, "L", seed=study * 10 + k)
            study += 1

    def pneumonia(split, n_patients):
        nonlocal person
        for _ in range(n_patients):
            for k in range(int(rng.integers(1, 4))):
                kind = "bacteria" if k % 2 == 0 else "virus"
                size = (int(rng.integers(20, 33)), int(rng.integers(20, 33)))
                files[f"{split}/PNEUMONIA/person{person}_{kind}_{person * 10 + k}.jpeg"] = jpeg_bytes(
                    160, size, "L", seed=person * 10 + k)
            person += 1

    normal("train", 14)
    pneumonia("train", 30)
    normal("val", 2)
    pneumonia("val", 2)
    normal("test", 5)
    pneumonia("test", 8)
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(f"chest_xray/{rel}", data)
            zf.writestr(f"chest_xray/chest_xray/{rel}", data)
        first = next(iter(files))
        folder, name = first.rsplit("/", 1)
        zf.writestr(f"chest_xray/__MACOSX/chest_xray/{folder}/._{name}", b"\x00\x05\x16\x07 mac resource fork")
        zf.writestr("chest_xray/chest_xray/.DS_Store", b"\x00\x00\x00\x01Bud1")


def fashion_arrays(n_train_per_class: int = 10, n_test_per_class: int = 3, seed: int = 0):
    """(train images, train labels, test images, test labels): 28x28 uint8, every class present."""
    rng = np.random.default_rng(seed)

    def make(n):
        labels = np.repeat(np.arange(10), n)
        rng.shuffle(labels)
        images = rng.integers(0, 40, (len(labels), 28, 28)).astype(np.uint8)
        for i, lab in enumerate(labels):  # a class-dependent bright band
            images[i, 2 + 2 * lab: 5 + 2 * lab, :] = 200
        return images, labels

    return (*make(n_train_per_class), *make(n_test_per_class))


def _csv(images, labels) -> str:
    header = "label," + ",".join(f"pixel{i}" for i in range(1, 785))
    lines = [header] + [f"{lab}," + ",".join(map(str, img.reshape(-1))) for img, lab in zip(images, labels)]
    return "\n".join(lines) + "\n"


def _idx(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def fashion_mnist_zip(path: Path, with_csv: bool = True, gzip_idx: bool = False, seed: int = 0):
    """``fashionmnist.zip`` in miniature: fashion-mnist_{train,test}.csv (label,pixel1..pixel784) and the idx
    files; ``with_csv=False, gzip_idx=True`` gives the original release's .gz files only. Returns the arrays."""
    arrays = fashion_arrays(seed=seed)
    tr_x, tr_y, te_x, te_y = arrays
    with zipfile.ZipFile(path, "w") as zf:
        if with_csv:
            zf.writestr("fashion-mnist_train.csv", _csv(tr_x, tr_y))
            zf.writestr("fashion-mnist_test.csv", _csv(te_x, te_y))
        for name, arr in (("train-images-idx3-ubyte", tr_x), ("train-labels-idx1-ubyte", tr_y),
                          ("t10k-images-idx3-ubyte", te_x), ("t10k-labels-idx1-ubyte", te_y)):
            data = _idx(arr)
            if gzip_idx:
                zf.writestr(name + ".gz", gzip.compress(data))
            else:
                zf.writestr(name, data)
    return arrays


BUILDERS = {"ham10000": ham10000_zip, "chest_xray": chest_xray_zip, "fashion_mnist": fashion_mnist_zip}
ARCHIVES = {"ham10000": "skin-cancer-mnist-ham10000.zip", "chest_xray": "chest-xray-pneumonia.zip",
            "fashion_mnist": "fashionmnist.zip"}


class FakeKaggle:
    """Stands in for ``kaggle.api.kaggle_api_extended``: ``KaggleApi().dataset_download_files`` copies the
    archive registered for a slug, as the real client writes ``<path>/<dataset>.zip``."""

    def __init__(self, archives: dict[str, Path] | None = None, error: BaseException | None = None,
                 auth_error: BaseException | None = None):
        self.archives = dict(archives or {})
        self.error, self.auth_error = error, auth_error
        self.calls: list[str] = []
        fake = self

        class KaggleApi:
            def authenticate(self):
                if fake.auth_error is not None:
                    raise fake.auth_error

            def dataset_download_files(self, dataset, path=None, force=False, quiet=True, unzip=False):
                fake.calls.append(dataset)
                assert unzip is False, "medimg extracts archives itself"
                if fake.error is not None:
                    raise fake.error
                shutil.copy(fake.archives[dataset], Path(path) / (dataset.split("/")[1] + ".zip"))

        self.KaggleApi = KaggleApi

    def install(self, monkeypatch) -> FakeKaggle:
        """Replace the kaggle package in ``sys.modules`` (so ``import kaggle`` side effects never run)."""
        pkg, api_pkg, ext = (types.ModuleType(n) for n in ("kaggle", "kaggle.api", "kaggle.api.kaggle_api_extended"))
        ext.KaggleApi = self.KaggleApi
        pkg.api, api_pkg.kaggle_api_extended = api_pkg, ext
        for name, mod in (("kaggle", pkg), ("kaggle.api", api_pkg), ("kaggle.api.kaggle_api_extended", ext)):
            monkeypatch.setitem(sys.modules, name, mod)
        return self


def compose_download(root: Path, name: str, overrides: list[str] = ()):
    """conf/download.yaml as Hydra composes it, with the data folder under ``root``."""
    from hydra import compose, initialize_config_dir

    from medimg.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name="download", overrides=[
            f"dataset={name}", f"paths.root_dir={root}", f"paths.data_dir={root / 'data'}",
            f"paths.output_dir={root / 'out'}", *overrides])
