"""The LightningDataModule: data table -> splits -> datasets -> loaders, plus class names and weights."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import DataLoader

from medimg.data.cache import ImageCache, build_cache
from medimg.data.dataset import ImageTable
from medimg.data.readers import read_image
from medimg.data.scan import find_bad_images
from medimg.data.sources import load_source
from medimg.data.splits import assign_fold, load_or_make_splits, split_summary
from medimg.data.transforms import eval_transform, train_transform

log = logging.getLogger(__name__)


def class_weights_from_counts(counts: list[int]) -> torch.Tensor:
    """w_c = 1/count_c, normalised so that the weights sum to the number of classes."""
    c = torch.tensor(counts, dtype=torch.float64)
    if (c == 0).any():
        raise ValueError(f"a class has no training images (counts {counts}); class weights need every class")
    w = 1.0 / c
    return (w / w.sum() * len(counts)).float()


def eval_sampler(dataset) -> UnrepeatedDistributedSampler | None:
    """Under DDP every rank sees each val/test item exactly once (no padding duplicates), so metrics reduced
    across ranks equal the single-process ones (Lightning leaves DistributedSamplers alone); else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None


class MedImageDataModule(L.LightningDataModule):
    """Builds train/val/test loaders from a ``dataset`` config (see conf/dataset/)."""

    def __init__(self, cfg: dict[str, Any], pin_memory: bool = False):
        super().__init__()
        self.cfg = dict(cfg)
        self.pin_memory = pin_memory
        self.table: pd.DataFrame | None = None
        self.class_names: list[str] = []
        self.datasets: dict[str, ImageTable] = {}

    # ------------------------------------------------------------------ data preparation
    def prepare_data(self) -> None:
        """Generate / verify the data on disk (rank 0 only under DDP)."""
        load_source(self.cfg)

    def _split_file(self) -> Path:
        if self.cfg.get("split_file"):
            return Path(self.cfg["split_file"])
        return Path(self.cfg["root"]) / "medimg_splits.csv"

    def load_table(self) -> pd.DataFrame:
        df, classes = load_source(self.cfg)
        sp = self.cfg.get("split") or {}
        df = load_or_make_splits(df, self._split_file(), sp.get("val", 0.15), sp.get("test", 0.15), sp.get("seed", 42))
        if self.cfg.get("num_folds"):
            df = assign_fold(df, int(self.cfg["num_folds"]), int(self.cfg.get("fold", 0)), sp.get("seed", 42))
        if self.cfg.get("scan_files", True):
            df = self._drop_bad_files(df)
        for split in ("train", "val", "test"):
            part = df[df["split"] == split]
            if len(part) == 0:
                raise ValueError(f"the {split} split of dataset {self.cfg.get('name')} is empty; "
                                 "add images or change dataset.split fractions")
            missing = sorted(set(classes) - set(part["label"]))
            if missing and split == "train":
                raise ValueError(f"classes {missing} have no training images in dataset {self.cfg.get('name')}")
        self.class_names = list(classes)
        return df

    def _drop_bad_files(self, df: pd.DataFrame) -> pd.DataFrame:
        bad = find_bad_images(df["path"].tolist(), self._split_file().with_name("medimg_scan.json"))
        if not bad:
            return df
        listing = "\n".join(f"  {p}: {e}" for p, e in list(bad.items())[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        if not self.cfg.get("skip_bad_files", False):
            raise ValueError(f"{len(bad)} image(s) cannot be read:\n{listing}{more}\n"
                             "Fix or remove them, or set dataset.skip_bad_files=true to drop them.")
        log.warning("dropping %d unreadable image(s) (dataset.skip_bad_files=true):\n%s%s", len(bad), listing, more)
        return df[~df["path"].isin(bad)].reset_index(drop=True)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        self.table = self.load_table()
        c = self.cfg
        size = int(c["img_size"])
        train_tf = train_transform(size, c.get("crop_scale", (0.7, 1.0)), c.get("mean"), c.get("std"),
                                   augment=c.get("augment", True), hflip=c.get("hflip", 0.5),
                                   vflip=c.get("vflip", 0.3), rotation=c.get("rotation", 15),
                                   color_jitter=c.get("color_jitter", 0.2))
        eval_tf = eval_transform(size, c.get("eval_resize", 1.0), c.get("mean"), c.get("std"))
        reader = self._image_cache(size) if c.get("cache", False) else read_image
        self.eval_tf, self.reader = eval_tf, reader
        for split, tf in (("train", train_tf), ("val", eval_tf), ("test", eval_tf)):
            self.datasets[split] = ImageTable(self.split_table(split), self.class_names, tf, reader=reader)
        log.info("dataset %s: %d images, classes %s\n%s", c.get("name"), len(self.table), self.class_names,
                 split_summary(self.table).to_string())

    def _image_cache(self, size: int) -> ImageCache:
        """dataset.cache=true: every image decoded and shrunk once into a memory-mapped file (see data/cache.py)."""
        c = self.cfg
        cache_size = float(c.get("cache_size", 1.15))
        if float(c.get("eval_resize", 1.0)) > cache_size:
            log.warning("dataset.eval_resize=%s exceeds dataset.cache_size=%s: eval images are upsampled from "
                        "the cache", c.get("eval_resize"), cache_size)
        cache_dir = Path(c["cache_dir"]) if c.get("cache_dir") else Path(c["root"]) / "cache"
        return build_cache(self.table["path"].tolist(), cache_dir, int(round(size * cache_size)),
                           workers=os.cpu_count() or 1)

    # ------------------------------------------------------------------ what the model needs
    def split_table(self, split: str) -> pd.DataFrame:
        assert self.table is not None, "call setup() first"
        return self.table[self.table["split"] == split].reset_index(drop=True)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_weights(self) -> torch.Tensor:
        counts = self.split_table("train")["label"].value_counts()
        return class_weights_from_counts([int(counts.get(c, 0)) for c in self.class_names])

    # ------------------------------------------------------------------ loaders
    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        c = self.cfg
        workers = int(c.get("num_workers", 0))
        bs = int(c["batch_size"] if split == "train" else c.get("eval_batch_size", c["batch_size"]))
        sampler = eval_sampler(self.datasets[split]) if split != "train" else None
        return DataLoader(
            self.datasets[split], batch_size=bs, shuffle=shuffle if sampler is None else False, sampler=sampler,
            num_workers=workers, pin_memory=self.pin_memory, persistent_workers=workers > 0, drop_last=False,
        )

    def unaugmented_loader(self, split: str) -> DataLoader:
        """Every image of ``split`` once, in order, with the eval transform (no augmentation), on every rank:
        what feature extraction reads (see data/features.py)."""
        c = self.cfg
        workers = int(c.get("num_workers", 0))
        ds = ImageTable(self.split_table(split), self.class_names, self.eval_tf, reader=self.reader)
        return DataLoader(ds, batch_size=int(c.get("eval_batch_size", c["batch_size"])), shuffle=False,
                          num_workers=workers, pin_memory=self.pin_memory, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)
