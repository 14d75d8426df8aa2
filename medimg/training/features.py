"""Feature cache for a head-only phase: the frozen backbone sees each image once, the head trains on features.

With ``stage.phases.<phase>.feature_cache=true`` and ``train_blocks: []`` the phase is a linear probe: the
backbone's pooled features of the train and val splits are computed once (eval transform, no augmentation,
the phase's precision, on the training device) and the head trains for all its epochs on those vectors
instead of pushing every image through the backbone every epoch. The extraction happens inside the fit,
when Lightning asks for the loaders (so under DDP each rank extracts on its own device after the process
group is up; every rank extracts all images, and the training sampler gives each rank its share).

When training batches are augmented on the device (``dataset.batch_augment``), the pass reads the cached uint8
images a batch at a time and crops, resamples and normalises them on the device as well (``augment_batch`` with
the evaluation geometry), so the loader workers only copy bytes. The log splits the pass into its parts: waiting
for batches, transfer + preparation on the device, and the forward pass.
"""

from __future__ import annotations

import logging
import time
from contextlib import nullcontext

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from medimg.data.batch_augment import AugmentSpec, augment_batch
from medimg.data.cached_batches import RawBatch
from medimg.data.datamodule import MedImageDataModule
from medimg.models.backbones import head_removed
from medimg.models.classifier import ImageClassifier

log = logging.getLogger(__name__)


class FeatureDataset(Dataset):
    """``(features, class index, row index)`` rows; takes the ``(row, seed)`` items of an EpochSampler too."""

    def __init__(self, features: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor):
        self.features, self.targets, self.rows = features, targets, rows

    def __len__(self) -> int:
        return len(self.features)

    def __getitem__(self, key):
        i = key[0] if isinstance(key, tuple) else key
        return self.features[i], self.targets[i], self.rows[i]


class PassTimes:
    """Seconds of a feature pass spent waiting for batches, moving and preparing them, and in the forward pass."""

    def __init__(self, device: torch.device):
        self.device, self.parts = device, {"waiting for batches": 0.0, "transfer + preparation": 0.0, "forward": 0.0}
        self.t = time.perf_counter()

    def lap(self, part: str) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        now = time.perf_counter()
        self.parts[part] += now - self.t
        self.t = now

    def describe(self) -> str:
        return ", ".join(f"{k} {v:.1f} s" for k, v in self.parts.items())


def device_batch(batch, device: torch.device, spec: AugmentSpec | None) -> torch.Tensor:
    """The network's input on ``device``: an image batch moved there, or a cached ``RawBatch`` moved there and
    cropped, resampled and normalised with ``spec``."""
    if isinstance(batch, RawBatch):
        return augment_batch(batch.images.to(device, non_blocking=True), batch.params, spec)
    return batch[0].to(device, non_blocking=True)


@torch.no_grad()
def extract_features(model: ImageClassifier, loader: DataLoader, autocast=None, spec: AugmentSpec | None = None,
                     times: PassTimes | None = None) -> FeatureDataset:
    """Pooled backbone features (float32 on the CPU) of every batch of ``loader`` (image batches, or cached
    ``RawBatch``es prepared with ``spec``), with ``model`` in eval mode (restored afterwards) on its device."""
    was_training = model.training
    model.eval()
    feats, targets, rows = [], [], []
    times = times or PassTimes(model.device)
    try:
        with head_removed(model.net, model.hparams.backbone), autocast if autocast is not None else nullcontext():
            for batch in loader:
                times.lap("waiting for batches")
                x = device_batch(batch, model.device, spec)
                times.lap("transfer + preparation")
                feats.append(model(x).float().cpu())
                times.lap("forward")
                targets.append(torch.as_tensor(batch[1]))
                rows.append(torch.as_tensor(batch[2]))
    finally:
        model.train(was_training)
    return FeatureDataset(torch.cat(feats), torch.cat(targets), torch.cat(rows))


def split_features(model: ImageClassifier, images: MedImageDataModule, split: str,
                   autocast=None) -> tuple[FeatureDataset, float]:
    """The features of one split of ``images`` (unaugmented, each image once) and the seconds they took;
    the rate goes into the log."""
    t0 = time.perf_counter()
    times = PassTimes(model.device)
    if images.batch_augment:  # cached uint8 batches, cropped and normalised on the device
        feats = extract_features(model, images.once_batches(split), autocast, images.eval_spec, times)
    else:
        feats = extract_features(model, images.once_loader(images.unaugmented_dataset(split)), autocast, times=times)
    seconds = time.perf_counter() - t0
    log.info("feature cache: %d %s images through the frozen backbone in %.1f s (%.0f images/s; %s), "
             "%d features each", len(feats), split, seconds, len(feats) / max(seconds, 1e-9), times.describe(),
             feats.features.shape[1])
    return feats, seconds


class FeatureDataModule(L.LightningDataModule):
    """Train/val loaders over backbone features of ``images`` (a set-up MedImageDataModule), extracted once
    on first use with the model being fitted. ``datasets`` stay the image datasets (for Grad-CAM logging)."""

    def __init__(self, images: MedImageDataModule):
        super().__init__()
        self.images = images
        self.datasets = images.datasets
        self.class_names = images.class_names
        self.features: dict[str, FeatureDataset] = {}
        self.extract_s: dict[str, float] = {}

    def _features(self, split: str) -> FeatureDataset:
        if split not in self.features:
            self.features[split], self.extract_s[split] = split_features(
                self.trainer.lightning_module, self.images, split, self.trainer.precision_plugin.forward_context())
        return self.features[split]

    def train_dataloader(self) -> DataLoader:
        return self.images.loader(self._features("train"), train=True, in_memory=True, epoch=self.trainer.current_epoch)

    def val_dataloader(self) -> DataLoader:
        return self.images.loader(self._features("val"), train=False, in_memory=True)
