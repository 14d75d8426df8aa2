"""Grad-CAM overlays of a fixed set of validation images, logged to TensorBoard every N epochs.

The same images every time (spread evenly over the validation split), so that the maps can be compared
across epochs. Runs at the end of validation, where Lightning has gradients off (inference mode):
``compute_cams`` turns them back on locally and restores the model's train/eval and ``requires_grad``
flags afterwards, so frozen blocks stay frozen and training continues unchanged.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.loggers import TensorBoardLogger

from medimg.data.transforms import Preprocess
from medimg.errors import ConfigError

log = logging.getLogger(__name__)


class GradCamLogger(Callback):
    def __init__(self, *, every_n_epochs: int, num_images: int, method: str, layer: str | None,
                 tag: str = "gradcam/val"):
        if int(every_n_epochs) < 1 or int(num_images) < 1:
            raise ConfigError(f"callbacks.gradcam: every_n_epochs ({every_n_epochs}) and num_images ({num_images}) "
                             "must be at least 1")
        self.every_n_epochs, self.num_images = int(every_n_epochs), int(num_images)
        self.method, self.layer, self.tag = method, layer, tag
        self._images: torch.Tensor | None = None
        self._labels: list[int] = []
        self._warned = False
        self.logged_epochs: list[int] = []

    def _due(self, trainer: Trainer) -> bool:
        return (not trainer.sanity_checking and trainer.is_global_zero
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    def _fixed_images(self, trainer: Trainer) -> tuple[torch.Tensor, list[int]]:
        if self._images is None:
            dm = trainer.datamodule
            ds = getattr(dm, "datasets", {}).get("val") if dm is not None else None
            if ds is None:
                loaders = trainer.val_dataloaders
                ds = (loaders[0] if isinstance(loaders, list | tuple) else loaders).dataset
            idx = np.unique(np.linspace(0, len(ds) - 1, min(self.num_images, len(ds))).round().astype(int))
            with torch.inference_mode(False):  # real tensors, not inference-mode ones
                items = [ds[int(i)] for i in idx]
                self._images = torch.stack([it[0].clone() for it in items])
            self._labels = [int(it[1]) for it in items]
        return self._images, self._labels

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if not self._due(trainer):
            return
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            if not self._warned:
                log.info("callbacks.gradcam: no TensorBoard logger, Grad-CAM overlays are not logged")
                self._warned = True
            return
        fig = self.figure(trainer, pl_module)
        for lg in loggers:
            lg.experiment.add_figure(self.tag, fig, global_step=trainer.global_step, close=False)
        import matplotlib.pyplot as plt

        plt.close(fig)
        self.logged_epochs.append(trainer.current_epoch)

    def figure(self, trainer: Trainer, pl_module: LightningModule):
        """Rows of image | overlay, titled with the true and predicted class and its probability."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        from medimg.explain.gradcam import compute_cams, denormalise, overlay

        images, labels = self._fixed_images(trainer)
        device = next(pl_module.parameters()).device
        with torch.inference_mode(False), torch.no_grad():
            probs = pl_module(images.clone().to(device)).float().softmax(-1).cpu()
        preds = probs.argmax(-1).tolist()
        cams = compute_cams(pl_module, images, preds, method=self.method, layer=self.layer)
        pre = Preprocess.from_dict(pl_module.hparams.preprocess)
        mean, std = pre.mean, pre.std
        names = list(getattr(pl_module, "class_names", [])) or [str(i) for i in range(probs.shape[1])]
        n = len(images)
        cols = min(4, n)
        rows = (n + cols - 1) // cols
        fig, axes = plt.subplots(rows, 2 * cols, figsize=(2.2 * 2 * cols, 2.4 * rows), squeeze=False)
        for ax in axes.flat:
            ax.axis("off")
        for i in range(n):
            r, c = divmod(i, cols)
            rgb = denormalise(images[i], mean, std)
            axes[r, 2 * c].imshow(rgb)
            axes[r, 2 * c].set_title(f"true {names[labels[i]]}", fontsize=7)
            axes[r, 2 * c + 1].imshow(overlay(rgb, cams[i]))
            axes[r, 2 * c + 1].set_title(f"pred {names[preds[i]]} {probs[i, preds[i]]:.2f}", fontsize=7)
        fig.suptitle(f"{self.method} ({self.layer or 'default layer'}), epoch {trainer.current_epoch}", fontsize=9)
        fig.tight_layout()
        return fig
