"""Chest X-Ray Pneumonia (Kaggle ``paultimothymooney/chest-xray-pneumonia``): NORMAL vs PNEUMONIA.

The archive nests the images as ``chest_xray/{train,val,test}/{NORMAL,PNEUMONIA}/*.jpeg`` and again as
``chest_xray/chest_xray/...``, plus a ``__MACOSX`` folder; the shallowest complete copy is used and the macOS
litter is skipped. The official test split stays the test split. The official val split (16 images) is too
small to select on: it is merged into train and a validation split is carved out of train, stratified and
grouped by patient.

Patient groups come from the file names: ``person1_bacteria_1.jpeg`` -> ``person1``;
``IM-0115-0001.jpeg`` -> ``IM-0115`` and ``NORMAL2-IM-1427-0001.jpeg`` -> ``NORMAL2-IM-1427`` (the
release does not document the NORMAL names; the number before the last one is taken as the patient, which
keeps images that differ only in their last number together). Any other name is its own group.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from medimg.data.kaggle import KaggleSet, extracted_dir
from medimg.data.readers import is_image_file
from medimg.data.table import check_table, make_table
from medimg.errors import DataError, MissingDataError

CLASSES = ("NORMAL", "PNEUMONIA")  # index 1 is the positive class
OFFICIAL_SPLITS = {"train": "", "val": "", "test": "test"}  # official val is merged into train

_PERSON = re.compile(r"^(person\d+)_", re.IGNORECASE)
_IM = re.compile(r"^((?:[A-Za-z0-9]+-)?IM-\d+)-\d+$", re.IGNORECASE)


def patient_group(filename: str) -> str:
    """The patient a file name belongs to (the file stem when the name carries none)."""
    stem = Path(filename).stem
    m = _PERSON.match(stem) or _IM.match(stem)
    return m.group(1) if m else stem


def _sub(folder: Path, name: str) -> Path | None:
    for p in folder.iterdir() if folder.is_dir() else ():
        if p.is_dir() and p.name.casefold() == name.casefold():
            return p
    return None


def _is_split_root(folder: Path) -> bool:
    return all((s := _sub(folder, split)) is not None and all(_sub(s, c) is not None for c in CLASSES)
               for split in ("train", "test"))


def locate(extracted: Path) -> Path:
    """The shallowest folder holding ``train/`` and ``test/``, each with NORMAL and PNEUMONIA folders."""
    candidates = [extracted] + sorted((p for p in extracted.rglob("*") if p.is_dir() and "__MACOSX" not in p.parts),
                                      key=lambda p: (len(p.parts), p.as_posix()))
    for folder in candidates:
        if _is_split_root(folder):
            return folder
    raise MissingDataError(f"no folder with train/ and test/, each holding {list(CLASSES)}, under {extracted}")


def chest_xray_table(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per image; official test kept, official train+val to be split into train and val."""
    base = locate(extracted_dir(KAGGLE, root))
    rows = []
    for official, split in OFFICIAL_SPLITS.items():
        sd = _sub(base, official)
        for label in CLASSES if sd is not None else ():
            cd = _sub(sd, label)
            for p in sorted(cd.iterdir()) if cd is not None else ():
                if p.is_file() and is_image_file(p) and not p.name.startswith("."):
                    rows.append((p.resolve(), label, patient_group(p.name), split))
    df = make_table([r[0] for r in rows], [r[1] for r in rows], groups=[r[2] for r in rows],
                    splits=[r[3] for r in rows])
    empty = [f"{s}/{c}" for s in ("train", "test") for c in CLASSES
             if not ((df["label"] == c) & (df["split"] == OFFICIAL_SPLITS[s])).any()]
    if empty:
        raise DataError(f"the folders {empty} under {base} hold no images")
    return check_table(df, str(base)), list(CLASSES)


KAGGLE = KaggleSet(name="chest_xray", slug="paultimothymooney/chest-xray-pneumonia", check=locate)
