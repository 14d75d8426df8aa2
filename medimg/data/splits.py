"""Train/val/test splits: stratified by label, grouped (no group in two splits), saved once, reused.

Pure functions on the data table; scikit-learn does the stratified (grouped) splitting.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from medimg.data.table import SPLITS
from medimg.errors import DataError
from medimg.files import write_csv

log = logging.getLogger(__name__)
SPLIT_VERSION = 2  # in the saved split's key: 2 = hold-outs above one half taken as the complement's folds


def _n_splits_for(fraction: float) -> int:
    if not 0 < fraction < 1:
        raise DataError(f"split fraction must be between 0 and 1, got {fraction}")
    return max(2, int(round(1 / fraction)))


def _holdout(df: pd.DataFrame, fraction: float, seed: int) -> np.ndarray:
    """Boolean mask of about ``fraction`` of the rows, stratified by label, whole groups only: one of ``1 /
    fraction`` folds, or, above one half, all but one of ``1 / (1 - fraction)`` folds."""
    if 0.5 < fraction < 1:
        return ~_holdout(df, 1 - fraction, seed)
    n_splits = _n_splits_for(fraction)
    counts = df["label"].value_counts()
    too_few = counts[counts < n_splits]
    if len(too_few):
        raise DataError(
            f"classes {dict(too_few)} have fewer images than a {fraction:.0%} hold-out needs "
            f"({n_splits}); add images or lower the split fractions"
        )
    if df["group"].nunique() < len(df):
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, idx = next(splitter.split(df, df["label"], groups=df["group"]))
    else:
        splitter = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=seed)
        _, idx = next(splitter.split(df, df["label"]))
    mask = np.zeros(len(df), bool)
    mask[idx] = True
    return mask


def _report_fraction(key: str, value: float, asked: float, pool: pd.DataFrame, mask: np.ndarray) -> None:
    """Log a hold-out that lands more than 0.03 from the fraction of ``pool`` it was asked to take."""
    got = float(mask.mean())
    if abs(got - asked) > 0.03:
        log.warning("%s=%g holds out %.3f of the %d images it is carved from (%.3f asked; stratified folds come "
                    "in sizes of 1/k); the split table in the log shows what each split got",
                    key, value, got, len(pool), asked)


def assign_splits(df: pd.DataFrame, val: float = 0.15, test: float = 0.15, seed: int = 42) -> pd.DataFrame:
    """Fill empty ``split`` cells: carve test (if the table has none) and val out of what is left."""
    df = df.copy()
    carved_test = not (df["split"] == "test").any()
    if carved_test:
        sub = df[df["split"] == ""]
        mask = _holdout(sub, test, seed)
        _report_fraction("dataset.split.test", test, test, sub, mask)
        df.loc[sub.index[mask], "split"] = "test"
    if not (df["split"] == "val").any():
        sub = df[df["split"].isin(["", "train"])]
        frac = val / (1 - test) if carved_test else val  # val is a fraction of the whole table
        mask = _holdout(sub, min(frac, 0.5), seed + 1)
        _report_fraction("dataset.split.val", val, frac, sub, mask)
        df.loc[sub.index[mask], "split"] = "val"
    df.loc[df["split"] == "", "split"] = "train"
    return df


def assign_fold(df: pd.DataFrame, num_folds: int, fold: int, seed: int = 42) -> pd.DataFrame:
    """K-fold cross-validation on train+val: fold ``fold`` becomes val, the rest train; test is kept."""
    if not 0 <= fold < num_folds:
        raise DataError(f"dataset.fold={fold} is outside 0..{num_folds - 1} for dataset.num_folds={num_folds}")
    df = df.copy()
    pool = df[df["split"] != "test"]
    if pool["group"].nunique() < len(pool):
        splitter = StratifiedGroupKFold(n_splits=num_folds, shuffle=True, random_state=seed)
        folds = list(splitter.split(pool, pool["label"], groups=pool["group"]))
    else:
        folds = list(StratifiedKFold(n_splits=num_folds, shuffle=True, random_state=seed).split(pool, pool["label"]))
    val_idx = pool.index[folds[fold][1]]
    df.loc[pool.index, "split"] = "train"
    df.loc[val_idx, "split"] = "val"
    return df


def table_fingerprint(df: pd.DataFrame) -> str:
    """A short hash of the rows a split was computed from (detects a changed data folder)."""
    h = hashlib.sha1()
    for p, lab, g, s in df.sort_values("path")[["path", "label", "group", "split"]].itertuples(index=False):
        h.update(f"{p}\t{lab}\t{g}\t{s}\n".encode())
    return h.hexdigest()[:16]


def load_or_make_splits(df: pd.DataFrame, split_csv: Path, val: float, test: float, seed: int) -> pd.DataFrame:
    """Use the split saved in ``split_csv`` when it was made from the same table, else make and save it."""
    key = f"{table_fingerprint(df)}-{val}-{test}-{seed}-v{SPLIT_VERSION}"
    if split_csv.exists():
        saved = pd.read_csv(split_csv, dtype=str, keep_default_na=False)
        if len(saved) and saved.get("key", pd.Series([""])).iloc[0] == key:
            by_path = dict(zip(saved["path"], saved["split"]))
            out = df.copy()
            out["split"] = [by_path.get(p, "") for p in out["path"]]
            if (out["split"] != "").all():
                return out
    out = assign_splits(df, val=val, test=test, seed=seed)
    write_csv(split_csv, out.assign(key=key))  # atomic: ranks and concurrent runs may race
    return out


def split_summary(df: pd.DataFrame) -> pd.DataFrame:
    """Images per class (rows) and split (columns)."""
    return pd.crosstab(df["label"], df["split"]).reindex(columns=list(SPLITS), fill_value=0)
