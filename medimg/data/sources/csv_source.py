"""Images listed in a CSV file: one row per image with its path and label, optionally a group and a split.

Relative paths start from the CSV's folder (or ``dataset.image_root``). A group column (a patient id, say)
keeps all images of a group in one split; a split column (train/val/test, empty = split automatically) fixes
the split of those rows. The other columns (or only those named in ``keep_columns``, e.g. the
``dataset.subgroup_columns``) travel with the table as metadata, for predictions.csv and the subgroup audit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medimg.data.table import RESERVED, check_table, make_table
from medimg.errors import ConfigError, DataError, MissingDataError

SPLIT_ALIASES = {"training": "train", "valid": "val", "validation": "val", "testing": "test"}


def _rows(df: pd.DataFrame, mask: pd.Series, n: int = 5) -> list[int]:
    """CSV line numbers (header = line 1) of the first ``n`` rows where ``mask`` holds."""
    return [int(i) + 2 for i in df.index[mask][:n]]


def _column(df: pd.DataFrame, name: str | None, key: str, csv: Path) -> pd.Series | None:
    if name is None:
        return None
    if name not in df.columns:
        raise DataError(f"column {name!r} (dataset.{key}) is not in {csv}; its columns are {list(df.columns)}. "
                         f"Set dataset.{key}=<column name>.")
    return df[name].str.strip()


def _sorted_labels(labels) -> list[str]:
    labels = sorted(set(labels))
    if all(lab.lstrip("-").isdigit() for lab in labels):
        return sorted(labels, key=int)
    return labels


def csv_table(csv: str | Path, path_column: str = "path", label_column: str = "label",
              group_column: str | None = None, split_column: str | None = None,
              classes: list[str] | None = None, image_root: str | Path | None = None,
              keep_columns: list[str] | None = None) -> tuple[pd.DataFrame, list[str]]:
    """Read ``csv``; returns (table, class names: ``classes`` when given, else the sorted labels found).
    ``keep_columns``: the metadata columns to keep (None = every column not used for path/label/group/split)."""
    csv = Path(csv).expanduser()
    if not csv.is_file():
        raise MissingDataError(f"label file {csv} does not exist; set dataset.csv to a CSV with a path and a label "
                                f"column")
    try:
        df = pd.read_csv(csv, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{csv} is empty; it needs a header line ({path_column},{label_column}) and a row per "
                        "image") from None
    except (pd.errors.ParserError, UnicodeDecodeError) as e:
        raise DataError(f"{csv} is not a readable CSV file ({str(e).splitlines()[0]}); save it as UTF-8 "
                        "comma-separated text with one row per image") from None
    paths = _column(df, path_column, "path_column", csv)
    labels = _column(df, label_column, "label_column", csv)
    groups = _column(df, group_column, "group_column", csv)
    splits = _column(df, split_column, "split_column", csv)
    if len(df) == 0:
        raise DataError(f"{csv} has no rows")
    for name, col in ((path_column, paths), (label_column, labels)):
        if (col == "").any():
            raise DataError(f"{csv}: empty {name!r} cells on lines {_rows(df, col == '')}")

    base = Path(image_root).expanduser() if image_root else csv.parent
    full = [p if p.is_absolute() else base / p for p in (Path(x).expanduser() for x in paths)]
    exists = pd.Series([p.is_file() for p in full], index=df.index)
    if not exists.all():
        missing = [f"line {i + 2}: {full[k]}" for k, i in enumerate(df.index) if not exists.iloc[k]][:10]
        raise MissingDataError(f"{(~exists).sum()} image(s) listed in {csv} do not exist (relative paths start "
                                f"at {base}): " + "; ".join(missing))

    if classes:
        classes = [str(c) for c in classes]
        unknown = ~labels.isin(classes)
        if unknown.any():
            raise DataError(f"{csv}: labels {sorted(set(labels[unknown]))} (lines {_rows(df, unknown)}) are not among "
                             f"dataset.classes={classes}; fix the rows or add the classes")
        empty = [c for c in classes if not (labels == c).any()]
        if empty:
            raise DataError(f"classes {empty} from dataset.classes have no rows in {csv}; add images or remove them")
    else:
        classes = _sorted_labels(labels)
    if len(classes) < 2:
        raise DataError(f"{csv} has a single class {classes}; a classifier needs at least two")

    resolved = [p.resolve() for p in full]
    if groups is not None:
        groups = [g or str(p) for g, p in zip(groups, resolved)]
    if splits is not None:
        splits = [SPLIT_ALIASES.get(s.lower(), s.lower()) for s in splits]
    used = {path_column, label_column, group_column, split_column}
    table = make_table(resolved, labels, groups=groups, splits=splits,
                       metadata=_metadata(df, keep_columns, used, csv))
    return check_table(table, str(csv)), classes


def _metadata(df: pd.DataFrame, keep: list[str] | None, used: set, csv: Path) -> pd.DataFrame:
    """The CSV's metadata columns: ``keep`` (each must exist), or every column not used otherwise. A column
    named like one of the table's own (path, label, group, split) is only kept when it was not used."""
    if keep is None:
        names = [c for c in df.columns if c not in used and c not in RESERVED]
    else:
        missing = [c for c in keep if c not in df.columns]
        if missing:
            raise ConfigError(f"columns {missing} (dataset.subgroup_columns) are not in {csv}; its columns are "
                              f"{list(df.columns)}")
        names = [c for c in dict.fromkeys(keep) if c not in used and c not in RESERVED]
    return df[names].apply(lambda col: col.str.strip())
