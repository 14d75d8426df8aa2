"""Download and prepare a Kaggle data set: ``python -m medimg.download dataset=ham10000``.

Downloads the archive with the official ``kaggle`` client into ``${paths.data_dir}/<name>/raw`` (or uses the
archive already there, for offline use), checks it against the caps in conf/download.yaml, extracts it safely,
checks the expected files and marks the set complete; then builds the data table once (Fashion-MNIST: writes
its PNGs) and prints the class counts. Running it again on a complete data set does nothing; two runs at once
take turns. Afterwards: ``python -m medimg.train dataset=<name>``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import pandas as pd
from omegaconf import DictConfig, OmegaConf

from medimg.cli import CONF_DIR, run_task
from medimg.config.commands import DownloadSettings
from medimg.config.overrides import guard_command_line
from medimg.config.schema import read
from medimg.data.archive import ArchiveLimits
from medimg.data.kaggle import fetch
from medimg.data.sources import KAGGLE_SETS, load_source
from medimg.errors import ConfigError

log = logging.getLogger("medimg.download")


def download(cfg: DictConfig | dict[str, Any]) -> pd.DataFrame | None:
    """Fetch and prepare ``cfg.dataset``; returns the prepared table (None with ``prepare=false``)."""
    c = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg)
    d = read(DownloadSettings, OmegaConf.to_container(c, resolve=True), "")
    ks = KAGGLE_SETS.get(d.dataset.source)
    if ks is None:
        raise ConfigError(f"dataset={d.dataset.name} is not downloaded from Kaggle; medimg.download handles "
                          f"dataset={' | '.join(sorted(KAGGLE_SETS))}")
    limits = ArchiveLimits.from_config({"max_archive_members": d.max_archive_members,
                                        "max_extracted_gib": d.max_extracted_gib,
                                        "max_compression_ratio": d.max_compression_ratio})
    extracted = fetch(ks, d.dataset.root, keep_archive=d.keep_archive, limits=limits)
    log.info("%s: files in %s", ks.name, extracted)
    if not d.prepare:
        return None
    table, classes = load_source(d.dataset)
    counts = pd.crosstab(table["label"], table["split"].replace("", "train/val (split at training)"))
    log.info("%s: %d images in %d classes %s\n%s", ks.name, len(table), len(classes), classes,
             counts.reindex(classes).to_string())
    print(f"{ks.name} is ready in {Path(d.dataset.root)}: {len(table)} images, {len(classes)} classes.\n"
          f"Train with: python -m medimg.train dataset={ks.name}")
    return table


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="download")
def main(cfg: DictConfig) -> None:
    run_task(download, cfg)


if __name__ == "__main__":
    guard_command_line("download")  # an unknown key: one line, before any work
    main()
