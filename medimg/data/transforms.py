"""Train and eval transforms on uint8 tensors (torchvision v2): augment in uint8, normalise last."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torchvision.transforms import v2

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def train_transform(img_size: int, crop_scale: Sequence[float] = (0.7, 1.0), mean=None, std=None,
                    augment: bool = True, hflip: float = 0.5, vflip: float = 0.3, rotation: float = 15.0,
                    color_jitter: float = 0.2) -> v2.Compose:
    """The seed recipe: RandomResizedCrop, h/v flips, ColorJitter, RandomRotation(15), ImageNet normalisation.

    A probability or strength of 0 leaves that augmentation out (no cost per image).
    """
    if not augment:
        return eval_transform(img_size, mean=mean, std=std)
    steps: list = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=tuple(crop_scale), antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if vflip:
        steps.append(v2.RandomVerticalFlip(vflip))
    if color_jitter:
        steps.append(v2.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter,
                                    hue=min(0.5, color_jitter / 10)))
    if rotation:
        steps.append(v2.RandomRotation(rotation))
    return v2.Compose([*steps, *_to_normalised(mean, std)])


def eval_transform(img_size: int, resize: float = 1.0, mean=None, std=None) -> v2.Compose:
    """Resize the shorter side to img_size*resize, center-crop img_size, normalise."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(round(img_size * resize)), antialias=True),
        v2.CenterCrop(img_size),
        *_to_normalised(mean, std),
    ])


def _to_normalised(mean, std) -> list:
    return [v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(mean or IMAGENET_MEAN), std=list(std or IMAGENET_STD))]
