"""Download and prepare a Kaggle data set: ``python -m medimg.download dataset=ham10000``.

Downloads the archive with the official ``kaggle`` client into ``${paths.data_dir}/<name>/raw`` (or uses the
archive already there, for offline use), checks it, extracts it safely, checks the expected files and marks
the set complete; then builds the data table once (Fashion-MNIST: writes its PNGs) and prints the class
counts. Running it again on a complete data set does nothing. Afterwards: ``python -m medimg.train
dataset=<name>``.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from medimg.data.archive import DamagedArchiveError, UnsafeArchiveError
from medimg.data.kaggle import DownloadError, KaggleCredentialsError, fetch
from medimg.data.sources import KAGGLE_SETS, load_source
from medimg.train import CONF_DIR

log = logging.getLogger("medimg.download")
USER_ERRORS = (KaggleCredentialsError, DownloadError, DamagedArchiveError, UnsafeArchiveError, FileNotFoundError,
               ValueError)


def download(cfg: DictConfig | dict[str, Any]) -> pd.DataFrame | None:
    """Fetch and prepare ``cfg.dataset``; returns the prepared table (None with ``prepare=false``)."""
    c = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    ds: dict[str, Any] = OmegaConf.to_container(c.dataset, resolve=True)  # only what is needed gets resolved
    ks = KAGGLE_SETS.get(ds.get("source"))
    if ks is None:
        raise ValueError(f"dataset={ds.get('name')} is not downloaded from Kaggle; medimg.download handles "
                         f"dataset={' | '.join(sorted(KAGGLE_SETS))}")
    extracted = fetch(ks, ds["root"], keep_archive=bool(c.get("keep_archive", False)))
    log.info("%s: files in %s", ks.name, extracted)
    if not c.get("prepare", True):
        return None
    table, classes = load_source(ds)
    counts = pd.crosstab(table["label"], table["split"].replace("", "train/val (split at training)"))
    log.info("%s: %d images in %d classes %s\n%s", ks.name, len(table), len(classes), classes,
             counts.reindex(classes).to_string())
    print(f"{ks.name} is ready in {Path(ds['root'])}: {len(table)} images, {len(classes)} classes.\n"
          f"Train with: python -m medimg.train dataset={ks.name}")
    return table


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="download")
def main(cfg: DictConfig) -> None:
    try:
        download(cfg)
    except USER_ERRORS as e:  # a clear message, not a traceback
        log.error("%s", e)
        sys.exit(1)


if __name__ == "__main__":
    main()
