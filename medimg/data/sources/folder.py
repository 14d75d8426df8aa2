"""Images in folders: ``root/{train,val,test}/<class>/*`` or a flat ``root/<class>/*``."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medimg.data.readers import is_image_file
from medimg.data.table import SPLITS, check_table, make_table
from medimg.errors import DataError, MissingDataError

# folders that operating systems, notebooks and NAS boxes leave behind: never classes
SYSTEM_FOLDERS = {"__MACOSX", "__pycache__", "@eaDir", "$RECYCLE.BIN", "System Volume Information", "lost+found"}


def is_hidden(name: str) -> bool:
    """Hidden (a leading dot: .ipynb_checkpoints, .DS_Store, ._x) or a system folder."""
    return name.startswith(".") or name in SYSTEM_FOLDERS


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not is_hidden(p.name))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                  and not any(is_hidden(part) for part in p.relative_to(folder).parts))


def folder_table(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """Scan ``root``; returns (table, class names in sorted order)."""
    root = Path(root)
    if not root.is_dir():
        raise MissingDataError(
            f"data folder {root} does not exist; set dataset.root to a folder of images laid out as "
            f"<root>/<class>/* or <root>/{{train,val,test}}/<class>/*"
        )
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    rows: list[tuple[Path, str, str]] = []
    if split_dirs:
        for sd in split_dirs:
            for cd in _class_dirs(sd):
                rows += [(p, cd.name, sd.name) for p in _images_in(cd)]
        classes = sorted({cd.name for sd in split_dirs for cd in _class_dirs(sd)})
    else:
        for cd in _class_dirs(root):
            rows += [(p, cd.name, "") for p in _images_in(cd)]
        classes = [cd.name for cd in _class_dirs(root)]
    if not classes:
        raise MissingDataError(f"{root} has no class folders; expected <root>/<class>/* images")
    df = make_table([r[0].resolve() for r in rows], [r[1] for r in rows], splits=[r[2] for r in rows])
    counts = df["label"].value_counts()
    empty = [c for c in classes if counts.get(c, 0) == 0]
    if empty:
        raise DataError(f"class folders {empty} under {root} hold no images; add images or remove the folders")
    return check_table(df, str(root)), classes
