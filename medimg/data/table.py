"""A data set is a table with one row per image.

Columns: ``path`` (absolute path of the image file), ``label`` (class name), ``group`` (what must not be
split apart: lesion or patient id; the path itself when there is none) and ``split`` (``train``, ``val``,
``test``, or empty when the data set has no split of its own). Every source (folder, csv, synthetic,
Kaggle sets) produces this table; everything downstream reads only it.
"""

from __future__ import annotations

import pandas as pd

COLUMNS = ["path", "label", "group", "split"]
SPLITS = ("train", "val", "test")


def make_table(paths, labels, groups=None, splits=None) -> pd.DataFrame:
    """Build a table from parallel lists; missing groups default to the path, missing splits to ''."""
    paths = [str(p) for p in paths]
    df = pd.DataFrame({
        "path": paths,
        "label": [str(x) for x in labels],
        "group": [str(g) for g in groups] if groups is not None else paths,
        "split": list(splits) if splits is not None else [""] * len(paths),
    })
    return df[COLUMNS]


def check_table(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Fail clearly when a table is empty, lacks columns or has unusable rows."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"data table from {where} lacks columns {missing}; expected {COLUMNS}")
    if len(df) == 0:
        raise FileNotFoundError(f"no images found in {where}")
    bad = sorted(set(df["split"]) - set(SPLITS) - {""})
    if bad:
        raise ValueError(f"unknown split names {bad} in {where}; expected {list(SPLITS)} or empty")
    if df["path"].duplicated().any():
        dup = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise ValueError(f"image {dup} is listed twice in {where}")
    return df.reset_index(drop=True)
