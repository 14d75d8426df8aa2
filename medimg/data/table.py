"""A data set is a table with one row per image.

Columns: ``path`` (absolute path of the image file), ``label`` (class name), ``group`` (what must not be
split apart: lesion or patient id; the path itself when there is none) and ``split`` (``train``, ``val``,
``test``, or empty when the data set has no split of its own). Every source (folder, csv, synthetic,
Kaggle sets) produces this table; everything downstream reads only it.

A source may add metadata columns after these (HAM10000: ``dx_type, age, sex, localization``; a CSV: its other
columns), as text. They travel with the rows through the splits into ``predictions.csv`` and the subgroup
audit (``dataset.subgroup_columns``); training never reads them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from medimg.errors import DataError, MissingDataError

COLUMNS = ["path", "label", "group", "split"]
SPLITS = ("train", "val", "test")
RESERVED = (*COLUMNS, "key")  # "key" is the split file's own column


def make_table(paths, labels, groups=None, splits=None,
               metadata: Mapping[str, Sequence] | pd.DataFrame | None = None) -> pd.DataFrame:
    """Build a table from parallel lists; missing groups default to the path, missing splits to ''.
    ``metadata``: extra columns (name -> one value per image), kept as text (missing values as '')."""
    paths = [str(p) for p in paths]
    df = pd.DataFrame({
        "path": paths,
        "label": [str(x) for x in labels],
        "group": [str(g) for g in groups] if groups is not None else paths,
        "split": list(splits) if splits is not None else [""] * len(paths),
    })
    return df[COLUMNS].join(metadata_frame(metadata, len(paths)))


def metadata_frame(metadata: Mapping[str, Sequence] | pd.DataFrame | None, rows: int) -> pd.DataFrame:
    """The metadata columns as text, one row per image, in a fresh 0..rows-1 index."""
    if metadata is None:
        return pd.DataFrame(index=range(rows))
    if isinstance(metadata, pd.DataFrame):
        frame = metadata.reset_index(drop=True)
    else:
        lengths = {name: len(values) for name, values in metadata.items()}
        if any(n != rows for n in lengths.values()):
            raise DataError(f"metadata columns have {lengths} values for {rows} images")
        frame = pd.DataFrame({name: list(values) for name, values in metadata.items()}, index=range(rows))
    clash = [c for c in frame.columns if c in RESERVED]
    if clash:
        raise DataError(f"metadata columns {clash} clash with the data table's own columns {list(RESERVED)}; "
                        "rename them in the source")
    if len(frame) != rows:
        raise DataError(f"metadata has {len(frame)} rows for {rows} images")
    return frame.astype(object).where(frame.notna(), "").astype(str)


def metadata_columns(df: pd.DataFrame) -> list[str]:
    """The table's metadata columns (everything besides path, label, group and split)."""
    return [c for c in df.columns if c not in RESERVED]


def check_table(df: pd.DataFrame, where: str) -> pd.DataFrame:
    """Fail clearly when a table is empty, lacks columns or has unusable rows."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"data table from {where} lacks columns {missing}; expected {COLUMNS}")
    if len(df) == 0:
        raise MissingDataError(f"no images found in {where}")
    bad = sorted(set(df["split"]) - set(SPLITS) - {""})
    if bad:
        raise DataError(f"unknown split names {bad} in {where}; expected {list(SPLITS)} or empty")
    if df["path"].duplicated().any():
        dup = df.loc[df["path"].duplicated(), "path"].iloc[0]
        raise DataError(f"image {dup} is listed twice in {where}")
    return df.reset_index(drop=True)
