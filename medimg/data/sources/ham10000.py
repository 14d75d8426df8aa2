"""HAM10000 (Kaggle ``kmader/skin-cancer-mnist-ham10000``): 7 diagnoses from ``dx``, grouped by ``lesion_id``.

The archive holds ``HAM10000_metadata.csv`` (``lesion_id,image_id,dx,dx_type,age,sex,localization``), the
images as ``<image_id>.jpg`` in ``HAM10000_images_part_1/`` and ``HAM10000_images_part_2/``, copies of those
folders in lower case (skipped at extraction) and ``hmnist_*.csv`` thumbnails (unused). Several images show
the same lesion: the table's group is the lesion id, so one lesion never sits in two splits. The metadata
columns ``dx_type, age, sex, localization`` (those the file has) travel with the table for the subgroup audit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from medimg.data.kaggle import KaggleSet, extracted_dir
from medimg.data.sources.locate import all_files, find_file
from medimg.data.table import check_table, make_table
from medimg.errors import DataError, MissingDataError

METADATA = "HAM10000_metadata.csv"
CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
COLUMNS = ("lesion_id", "image_id", "dx")
METADATA_COLUMNS = ("dx_type", "age", "sex", "localization")  # kept in the data table for subgroup audits


def locate(extracted: Path) -> tuple[pd.DataFrame, dict[str, Path]]:
    """The metadata and ``{image_id: path}``; FileNotFoundError naming what the folder lacks."""
    files = all_files(extracted)
    meta_path = find_file(extracted, METADATA, files=files)
    if meta_path is None:
        raise MissingDataError(f"{METADATA} is not in {extracted}")
    meta = pd.read_csv(meta_path, dtype=str, keep_default_na=False)
    missing_cols = [c for c in COLUMNS if c not in meta.columns]
    if missing_cols:
        raise MissingDataError(f"{meta_path} lacks the columns {missing_cols} (it has {list(meta.columns)})")
    images: dict[str, Path] = {}
    for p in files:  # shallowest and upper-case folders first: the first copy found wins
        if p.suffix.lower() == ".jpg" and "images_part" in p.parent.name.lower():
            images.setdefault(p.stem, p)
    if not images:
        raise MissingDataError(f"no HAM10000_images_part_* folders with .jpg images in {extracted}")
    missing = [i for i in meta["image_id"] if i not in images]
    if missing:
        raise MissingDataError(f"{len(missing)} image(s) listed in {meta_path.name} are not in the image "
                                f"folders, e.g. {missing[:5]}")
    return meta, images


def ham10000_table(root: str | Path) -> tuple[pd.DataFrame, list[str]]:
    """One row per image: label = dx, group = lesion_id, no split of its own (carved grouped + stratified)."""
    extracted = extracted_dir(KAGGLE, root)
    meta, images = locate(extracted)
    unknown = sorted(set(meta["dx"]) - set(CLASSES))
    if unknown:
        raise DataError(f"{METADATA} has diagnoses {unknown} besides the known {list(CLASSES)}")
    extra = meta[[c for c in METADATA_COLUMNS if c in meta.columns]]
    df = make_table([images[i].resolve() for i in meta["image_id"]], meta["dx"], groups=meta["lesion_id"],
                    metadata=extra)
    return check_table(df, str(extracted)), list(CLASSES)


KAGGLE = KaggleSet(name="ham10000", slug="kmader/skin-cancer-mnist-ham10000", check=locate)
