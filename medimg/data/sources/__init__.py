"""Data sources: each turns a ``dataset`` config into a data table and its class names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pandas as pd

from medimg.data.kaggle import KaggleSet
from medimg.data.sources import chest_xray, fashion_mnist, ham10000
from medimg.data.sources.csv_source import csv_table
from medimg.data.sources.folder import folder_table
from medimg.data.sources.synthetic import synthetic_table


def _synthetic(cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    return synthetic_table(cfg["root"], cfg["num_images"], cfg["img_size"], cfg.get("generator_seed", 0))


def _folder(cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    return folder_table(cfg["root"])


def _csv(cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    return csv_table(cfg["csv"], path_column=cfg.get("path_column", "path"),
                     label_column=cfg.get("label_column", "label"), group_column=cfg.get("group_column"),
                     split_column=cfg.get("split_column"), classes=cfg.get("classes"),
                     image_root=cfg.get("image_root"))


SOURCES: dict[str, Callable[[dict[str, Any]], tuple[pd.DataFrame, list[str]]]] = {
    "synthetic": _synthetic,
    "folder": _folder,
    "csv": _csv,
    "ham10000": lambda cfg: ham10000.ham10000_table(cfg["root"]),
    "chest_xray": lambda cfg: chest_xray.chest_xray_table(cfg["root"]),
    "fashion_mnist": lambda cfg: fashion_mnist.fashion_mnist_table(cfg["root"]),
}

# sources downloaded from Kaggle by `python -m medimg.download dataset=<name>`
KAGGLE_SETS: dict[str, KaggleSet] = {ks.name: ks for ks in (ham10000.KAGGLE, chest_xray.KAGGLE, fashion_mnist.KAGGLE)}


def load_source(cfg: dict[str, Any]) -> tuple[pd.DataFrame, list[str]]:
    """The data table and class names for ``cfg['source']``."""
    name = cfg.get("source")
    if name not in SOURCES:
        raise ValueError(f"unknown dataset.source={name!r}; choose one of {sorted(SOURCES)}")
    return SOURCES[name](cfg)
