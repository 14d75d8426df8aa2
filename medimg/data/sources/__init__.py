"""Data sources: each turns the ``dataset`` settings into a data table and its class names.

A source that medimg generates or downloads (synthetic, the Kaggle sets) keeps medimg's own files (split,
scan record, image cache) in its own folder. A folder or CSV the user points at is never written to: medimg's
files about it go to ``<paths.cache_dir>/<source>-<name>-<hash of its path>`` (``work_dir``), so a moved or
other folder gets its own.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from medimg.config.dataset import SOURCE_OPTIONS, DatasetSettings
from medimg.data.kaggle import KaggleSet, extracted_dir
from medimg.data.sources import chest_xray, fashion_mnist, ham10000
from medimg.data.sources.csv_source import csv_table
from medimg.data.sources.folder import folder_table
from medimg.data.sources.synthetic import synthetic_table
from medimg.errors import ConfigError
from medimg.names import same_names


def _synthetic(ds: DatasetSettings) -> tuple[pd.DataFrame, list[str]]:
    return synthetic_table(ds.root, ds.option("num_images"), ds.img_size, ds.option("generator_seed"),
                           ds.extra.get("site_shift", 0.0))  # absent from older runs: the plain set


def _csv(ds: DatasetSettings) -> tuple[pd.DataFrame, list[str]]:
    return csv_table(ds.option("csv"), path_column=ds.option("path_column"), label_column=ds.option("label_column"),
                     group_column=ds.option("group_column"), split_column=ds.option("split_column"),
                     classes=ds.option("classes"), image_root=ds.option("image_root"),
                     keep_columns=list(ds.subgroup_columns) or None)


SOURCES: dict[str, Callable[[DatasetSettings], tuple[pd.DataFrame, list[str]]]] = {
    "synthetic": _synthetic,
    "folder": lambda ds: folder_table(ds.root),
    "csv": _csv,
    "ham10000": lambda ds: ham10000.ham10000_table(ds.root),
    "chest_xray": lambda ds: chest_xray.chest_xray_table(ds.root),
    "fashion_mnist": lambda ds: fashion_mnist.fashion_mnist_table(ds.root),
}
same_names(SOURCES, tuple(SOURCE_OPTIONS), "data sources (config/dataset.py SOURCE_OPTIONS lists their keys)")
USER_SOURCES = ("folder", "csv")  # data the user points at: read-only to medimg

# sources downloaded from Kaggle by `python -m medimg.download dataset=<name>`
KAGGLE_SETS: dict[str, KaggleSet] = {ks.name: ks for ks in (ham10000.KAGGLE, chest_xray.KAGGLE, fashion_mnist.KAGGLE)}


def check_source(ds: DatasetSettings) -> None:
    if ds.source not in SOURCES:
        raise ConfigError(f"unknown dataset.source={ds.source!r}; choose one of {sorted(SOURCES)}")
    if ds.source == "csv":
        ds.option("csv")
    elif not ds.root:
        raise ConfigError(f"dataset.root is not set for dataset.source={ds.source}")


def check_present(ds: DatasetSettings) -> None:
    """That the data the config points at are there (a folder, a CSV, a downloaded set), without reading
    them: before slower checks (the pretrained weights) and any data work. A generated set is not checked."""
    check_source(ds)
    if ds.source == "folder" and not Path(ds.root).expanduser().is_dir():
        folder_table(Path(ds.root).expanduser())  # its own message names the key and the expected layout
    elif ds.source == "csv" and not Path(ds.option("csv")).expanduser().is_file():
        _csv(ds)
    elif ds.source in KAGGLE_SETS:
        extracted_dir(KAGGLE_SETS[ds.source], ds.root)  # names the download command


def load_source(ds: DatasetSettings) -> tuple[pd.DataFrame, list[str]]:
    """The data table and class names of ``ds``."""
    check_source(ds)
    return SOURCES[ds.source](ds)


def work_dir(ds: DatasetSettings, cache_dir: str | Path) -> Path:
    """Where medimg keeps its own files about the data set (split, scan record, image cache)."""
    if ds.source not in USER_SOURCES:
        return Path(ds.root)
    where = Path(ds.option("csv") if ds.source == "csv" else ds.root).expanduser().resolve()
    digest = hashlib.sha1(str(where).encode()).hexdigest()[:12]
    return Path(cache_dir).expanduser() / f"{ds.source}-{where.stem or 'root'}-{digest}"
