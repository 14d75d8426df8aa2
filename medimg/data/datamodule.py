"""The LightningDataModule: data table -> splits -> datasets -> loaders, plus class names and weights.

Everything medimg writes about the data (split file, scan record, image cache) goes to ``work_dir``: the data
set's own folder for sets medimg generates or downloads, a folder under ``paths.cache_dir`` for a folder or
CSV of the user's, which stays read-only to medimg.
"""

from __future__ import annotations

import functools
import logging
import os
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import BatchSampler, DataLoader, Dataset

from medimg.config.dataset import PREPROCESS_KEYS, DatasetSettings
from medimg.data.batch_augment import AugmentSpec, augment_batch
from medimg.data.cache import ImageCache, build_cache
from medimg.data.cached_batches import CachedBatches, RawBatch, passthrough
from medimg.data.image_dataset import ImageDataset
from medimg.data.readers import ImageLimits, read_image
from medimg.data.resident_batches import ResidentBatches, ResidentSplit
from medimg.data.sampling import EpochSampler, balanced_weights
from medimg.data.scan import find_bad_images
from medimg.data.sources import load_source
from medimg.data.splits import assign_fold, load_or_make_splits, split_summary
from medimg.data.transforms import Preprocess, train_transform
from medimg.data.workers import worker_context
from medimg.errors import ConfigError, DataError

log = logging.getLogger(__name__)


def class_weights_from_counts(counts: list[int]) -> torch.Tensor:
    """w_c = 1/count_c, normalised so that the weights sum to the number of classes."""
    c = torch.tensor(counts, dtype=torch.float64)
    if (c == 0).any():
        raise DataError(f"a class has no training images (counts {counts}); class weights need every class")
    w = 1.0 / c
    return (w / w.sum() * len(counts)).float()


def eval_sampler(dataset) -> UnrepeatedDistributedSampler | None:
    """Under DDP every rank sees each val/test item exactly once (no padding duplicates), so metrics reduced
    across ranks equal the single-process ones (Lightning leaves DistributedSamplers alone); else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return UnrepeatedDistributedSampler(dataset, shuffle=False)
    return None


def preprocess_of(ds: DatasetSettings) -> Preprocess:
    """The data set's own preprocessing keys as a Preprocess (every key set; a run fills the null ones from its
    backbone's pretrained config: training/model.py ``run_preprocess``)."""
    unset = [k for k in PREPROCESS_KEYS if getattr(ds, k) is None]
    if unset:
        raise ConfigError(f"dataset keys {', '.join(f'dataset.{k}' for k in unset)} are null (= the backbone's "
                          "pretrained config), but no backbone is known here; set them, or use a checkpoint's "
                          "preprocessing")
    return Preprocess(ds.img_size, ds.eval_resize, tuple(ds.mean), tuple(ds.std), ds.interpolation)


class MedImageDataModule(L.LightningDataModule):
    """Builds train/val/test loaders from the ``dataset`` settings; medimg's own files go to ``work_dir``.

    ``train_seed`` fixes the order and augmentation of every training epoch (see data/sampling.py).
    ``preprocess`` (a trained model's, for evaluation) replaces the data set's size, resampling and
    normalisation; by default they are the data set's (``preprocess_of``). ``batch_augment`` (the run's resolved
    ``dataset.batch_augment``): training batches leave the loader as cached uint8 and are augmented whole after
    the transfer (data/batch_augment.py). ``class_order`` (a trained model's
    classes, for evaluation) orders the data's classes as the model does when the two are the same set: a
    folder of another site's images lists them alphabetically.
    """

    def __init__(self, ds: DatasetSettings, work_dir: str | Path, pin_memory: bool, train_seed: int,
                 preprocess: Preprocess | None = None, class_order: list[str] | None = None,
                 batch_augment: bool = False):
        super().__init__()
        self.augment_whole_batches = batch_augment
        self._resident: ResidentSplit | None = None  # the training split held on the device, once copied
        self.class_order = list(class_order) if class_order is not None else None
        self.ds = ds
        self.preprocess = preprocess or preprocess_of(ds)
        self.work_dir = Path(work_dir)
        self.pin_memory = pin_memory
        self.train_seed = int(train_seed)
        self.table: pd.DataFrame | None = None
        self.class_names: list[str] = []
        self.datasets: dict[str, ImageDataset] = {}

    # ------------------------------------------------------------------ data preparation
    def prepare_data(self) -> None:
        """Generate / verify the data on disk (rank 0 only under DDP)."""
        load_source(self.ds)

    def load_table(self) -> pd.DataFrame:
        ds = self.ds
        df, classes = load_source(ds)
        df = load_or_make_splits(df, self.work_dir / "medimg_splits.csv", ds.split.val, ds.split.test, ds.split.seed)
        if ds.num_folds:
            df = assign_fold(df, ds.num_folds, ds.fold, ds.split.seed)
        if ds.scan_files:
            df = self._drop_bad_files(df)
        for split in ("train", "val", "test"):
            part = df[df["split"] == split]
            if len(part) == 0:
                raise DataError(f"the {split} split of dataset {ds.name} is empty; "
                                "add images or change dataset.split fractions")
            missing = sorted(set(classes) - set(part["label"]))
            if missing and split == "train":
                raise DataError(f"classes {missing} have no training images in dataset {ds.name}")
        same_set = self.class_order is not None and sorted(self.class_order) == sorted(classes)
        self.class_names = list(self.class_order) if same_set else list(classes)
        return df

    @property
    def limits(self) -> ImageLimits:
        return ImageLimits(self.ds.max_image_pixels, self.ds.max_aspect_ratio, key_prefix="dataset.")

    def _cache_side(self) -> int:
        return int(round(self.preprocess.img_size * self.ds.cache_size))

    def _drop_bad_files(self, df: pd.DataFrame) -> pd.DataFrame:
        bad = find_bad_images(df["path"].tolist(), self.work_dir / "medimg_scan.json", limits=self.limits,
                              min_side=self._cache_side() if self.ds.cache else None)
        if not bad:
            return df
        listing = "\n".join(f"  {p}: {e}" for p, e in list(bad.items())[:20])
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        if not self.ds.skip_bad_files:
            raise DataError(f"{len(bad)} image(s) cannot be read:\n{listing}{more}\n"
                            "Fix or remove them, or set dataset.skip_bad_files=true to drop them.")
        log.warning("dropping %d unreadable image(s) (dataset.skip_bad_files=true):\n%s%s", len(bad), listing, more)
        return df[~df["path"].isin(bad)].reset_index(drop=True)

    def setup(self, stage: str | None = None) -> None:
        if self.table is not None:
            return
        self.table = self.load_table()
        ds, pre = self.ds, self.preprocess
        train_tf = train_transform(pre.img_size, ds.crop_scale, pre.mean, pre.std, augment=ds.augment,
                                   hflip=ds.hflip, vflip=ds.vflip, rotation=ds.rotation,
                                   color_jitter=ds.color_jitter, interpolation=pre.interpolation)
        self.eval_tf = pre.transform()
        self.reader = self._image_cache() if ds.cache else functools.partial(read_image, limits=self.limits)
        for split, tf in (("train", train_tf), ("val", self.eval_tf), ("test", self.eval_tf)):
            self.datasets[split] = ImageDataset(self.split_table(split), self.class_names, tf, reader=self.reader)
        log.info("dataset %s: %d images, classes %s\n%s", ds.name, len(self.table), self.class_names,
                 split_summary(self.table).to_string())
        if self.batch_augment:
            log.info("training batches: whole uint8 batches from the cache, augmented per image on the model's "
                     "device (dataset.batch_augment=false: per image in the loader workers)")

    def _image_cache(self) -> ImageCache:
        """dataset.cache=true: every image decoded and shrunk once into a memory-mapped file (see data/cache.py)."""
        ds = self.ds
        if self.preprocess.resize > ds.cache_size:
            log.warning("eval resize %s (dataset.eval_resize or 1 / the backbone's crop fraction) exceeds "
                        "dataset.cache_size=%s: eval images are upsampled from the cache",
                        self.preprocess.resize, ds.cache_size)
        return build_cache(self.table["path"].tolist(), self.work_dir / "cache", self._cache_side(), self.limits,
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
    def loader(self, dataset: Dataset, train: bool, in_memory: bool = False, epoch: int = 0) -> DataLoader:
        """Training: seeded epochs of shuffled (row, seed) items, from ``epoch`` (the fit's current one);
        evaluation: every item once, in order (each rank its share under DDP). Loader workers persist across
        epochs; ``in_memory`` data needs none."""
        ds = self.ds
        sampler = self.train_sampler(dataset, epoch) if train else eval_sampler(dataset)
        return self._loader(dataset, ds.batch_size if train else ds.eval_batch_size, sampler,
                            workers=0 if in_memory else ds.num_workers, persistent=True)

    def train_sampler(self, dataset, epoch: int) -> EpochSampler:
        """The seeded (row, seed) order of a training epoch: shuffled, or class-balanced (``dataset.sampling``)."""
        weights = balanced_weights(dataset.targets) if self.ds.sampling == "balanced" else None
        return EpochSampler(len(dataset), self.train_seed, epoch, weights=weights)

    def once_loader(self, dataset: Dataset) -> DataLoader:
        """Every item of ``dataset`` once, in order, on every rank (feature extraction); workers end with it."""
        return self._loader(dataset, self.ds.eval_batch_size, None, self.ds.num_workers, persistent=False)

    def _loader(self, dataset: Dataset, batch_size: int, sampler, workers: int, persistent: bool) -> DataLoader:
        return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=workers,
                          pin_memory=self.pin_memory, persistent_workers=persistent and workers > 0,
                          drop_last=False, multiprocessing_context=worker_context(workers))

    def unaugmented_dataset(self, split: str) -> ImageDataset:
        """Every image of ``split`` with the eval transform (no augmentation): what feature extraction reads."""
        return ImageDataset(self.split_table(split), self.class_names, self.eval_tf, reader=self.reader)

    @property
    def batch_augment(self) -> bool:
        """Training batches augmented on the device (``dataset.batch_augment`` as resolved, or
        ``dataset.device_resident=true``; from the cache only)."""
        return bool(self.ds.cache and (self.augment_whole_batches or self.ds.device_resident is True))

    @functools.cached_property
    def augment_spec(self) -> AugmentSpec:
        ds, pre = self.ds, self.preprocess
        return AugmentSpec(pre.img_size, ds.augment, tuple(ds.crop_scale), ds.hflip, ds.vflip, ds.rotation,
                           ds.color_jitter, pre.mean, pre.std, pre.interpolation)

    @functools.cached_property
    def eval_spec(self) -> AugmentSpec:
        """The evaluation transform's geometry and normalisation as a batch operation (no augmentation)."""
        pre = self.preprocess
        return AugmentSpec(pre.img_size, False, (1.0, 1.0), 0.0, 0.0, 0.0, 0.0, pre.mean, pre.std,
                           pre.interpolation, crop_fraction=1.0 / pre.resize)

    def once_batches(self, split: str) -> DataLoader:
        """Every image of ``split`` once, in order, as cached ``RawBatch``es with the evaluation geometry, to be
        cropped and normalised on the device (``augment_batch`` with ``eval_spec``): the feature cache's input
        when training batches are augmented on the device."""
        ds, data = self.ds, self.datasets[split]
        assert isinstance(self.reader, ImageCache)
        batches = CachedBatches(self.reader, [self.reader.row[p] for p in data.paths], data.targets, self.eval_spec)
        sampler = BatchSampler([(i, 0) for i in range(len(data))], ds.eval_batch_size, drop_last=False)
        return DataLoader(batches, batch_sampler=sampler, collate_fn=passthrough, num_workers=ds.num_workers,
                          pin_memory=self.pin_memory, multiprocessing_context=worker_context(ds.num_workers))

    def batch_loader(self, epoch: int) -> DataLoader:
        """Training batches as they are cached (``RawBatch``): one read per batch, one parameter row per image,
        in the order and with the seeds of ``EpochSampler``; augmented after the transfer."""
        ds, train = self.ds, self.datasets["train"]
        sampler = BatchSampler(self.train_sampler(train, epoch), ds.batch_size, drop_last=False)
        assert isinstance(self.reader, ImageCache)
        batches = CachedBatches(self.reader, [self.reader.row[p] for p in train.paths], train.targets,
                                self.augment_spec)
        return DataLoader(batches, batch_sampler=sampler, collate_fn=passthrough, num_workers=ds.num_workers,
                          pin_memory=self.pin_memory, persistent_workers=ds.num_workers > 0,
                          multiprocessing_context=worker_context(ds.num_workers))

    def resident_split(self, device: torch.device) -> ResidentSplit | None:
        """The training split held on ``device`` when ``dataset.device_resident`` says so (auto: a GPU whose free
        memory times ``device_resident_share`` holds it); copied once, kept across epochs."""
        ds, train = self.ds, self.datasets["train"]
        if not self.batch_augment or ds.device_resident is False:
            return None
        if self._resident is not None and self._resident.device == device:
            return self._resident
        rows = [self.reader.row[p] for p in train.paths]
        need = ResidentSplit.nbytes(self.reader, rows)
        if ds.device_resident == "auto":
            if device.type != "cuda":
                return None
            free = torch.cuda.mem_get_info(device)[0]
            if need > free * ds.device_resident_share:
                log.info("training split (%.0f MB) not held on %s: above dataset.device_resident_share=%g of its "
                         "%.0f MB free", need / 1e6, device, ds.device_resident_share, free / 1e6)
                return None
        self._resident = ResidentSplit(self.reader, rows, train.targets, device)
        log.info("training split held on %s: %d images, %.0f MB, batches indexed there (dataset.device_resident)",
                 device, len(rows), need / 1e6)
        return self._resident

    def resident_loader(self, split: ResidentSplit, epoch: int) -> ResidentBatches:
        sampler = self.train_sampler(self.datasets["train"], epoch)
        return ResidentBatches(split, sampler, self.ds.batch_size, self.augment_spec)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """A ``RawBatch`` (training with ``batch_augment``) is augmented and normalised here, on the device."""
        if isinstance(batch, RawBatch):
            return augment_batch(batch.images, batch.params, self.augment_spec), batch.targets, batch.rows
        return batch

    def train_dataloader(self) -> DataLoader:
        epoch = self.trainer.current_epoch if self.trainer else 0
        if self.batch_augment:
            device = self.trainer.strategy.root_device if self.trainer else torch.device("cpu")
            split = self.resident_split(device)
            return self.resident_loader(split, epoch) if split is not None else self.batch_loader(epoch)
        return self.loader(self.datasets["train"], train=True, epoch=epoch)

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["val"], train=False)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.datasets["test"], train=False)
