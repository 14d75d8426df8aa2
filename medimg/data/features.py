"""Feature cache for a head-only phase: the frozen backbone sees each image once, the head trains on features.

With ``stage.phases.<phase>.feature_cache=true`` and ``train_blocks: []`` the phase is a linear probe: the
backbone's pooled features of the train and val splits are computed once (eval transform, no augmentation,
the phase's precision, on the training device) and the head trains for all its epochs on those vectors
instead of pushing every image through the backbone every epoch. The extraction happens inside the fit,
when Lightning asks for the loaders (so under DDP each rank extracts on its own device after the process
group is up; every rank extracts all images, and Lightning shards the training features).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from medimg.data.datamodule import MedImageDataModule, eval_sampler
from medimg.models.backbones import HEAD

log = logging.getLogger(__name__)


@contextmanager
def head_removed(net: nn.Module) -> Iterator[nn.Module]:
    """``net`` returns its pooled features (the input of the head) inside the block."""
    head = getattr(net, HEAD)
    setattr(net, HEAD, nn.Identity())
    try:
        yield net
    finally:
        setattr(net, HEAD, head)


@torch.no_grad()
def extract_features(model: L.LightningModule, loader: DataLoader, autocast=None) -> tuple[torch.Tensor, ...]:
    """(features float32 NxD on the CPU, targets N, dataset indices N) of every batch of ``loader``,
    with ``model`` in eval mode (restored afterwards) on its device."""
    was_training = model.training
    model.eval()
    feats, targets, index = [], [], []
    try:
        with head_removed(model.net), autocast if autocast is not None else nullcontext():
            for x, y, i in loader:
                f = model(x.to(model.device, non_blocking=True))
                feats.append(f.float().cpu())
                targets.append(torch.as_tensor(y))
                index.append(torch.as_tensor(i))
    finally:
        model.train(was_training)
    return torch.cat(feats), torch.cat(targets), torch.cat(index)


class FeatureDataModule(L.LightningDataModule):
    """Train/val loaders over backbone features of ``images`` (a set-up MedImageDataModule), extracted once
    on first use with the model being fitted. ``datasets`` stay the image datasets (for Grad-CAM logging)."""

    def __init__(self, images: MedImageDataModule):
        super().__init__()
        self.images = images
        self.datasets = images.datasets
        self.class_names = images.class_names
        self.features: dict[str, TensorDataset] = {}
        self.extract_s: dict[str, float] = {}

    def _features(self, split: str) -> TensorDataset:
        if split not in self.features:
            model = self.trainer.lightning_module
            t0 = time.perf_counter()
            feats, targets, index = extract_features(model, self.images.unaugmented_loader(split),
                                                     self.trainer.precision_plugin.forward_context())
            self.extract_s[split] = time.perf_counter() - t0
            self.features[split] = TensorDataset(feats, targets, index)
            log.info("feature cache: %d %s images through the frozen backbone in %.1f s (%.0f images/s), "
                     "%d features each", len(feats), split, self.extract_s[split],
                     len(feats) / max(self.extract_s[split], 1e-9), feats.shape[1])
        return self.features[split]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self._features("train"), batch_size=int(self.images.cfg["batch_size"]), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        ds = self._features("val")
        bs = int(self.images.cfg.get("eval_batch_size", self.images.cfg["batch_size"]))
        return DataLoader(ds, batch_size=bs, shuffle=False, sampler=eval_sampler(ds))
