"""Train and eval transforms (torchvision v2): augment on uint8 images, normalise last."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import v2

from medimg.data.color_jitter import JitterNormalize
from medimg.errors import CheckpointError
from medimg.names import INTERPOLATIONS, MAX_IMG_SIZE

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # ImageNet's channel statistics (for scripts and tests; configs set their own)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image is prepared for the network at evaluation and inference time (stored in checkpoints):
    resize the shorter side to ``img_size * resize`` with ``interpolation``, center-crop ``img_size``, scale to
    [0, 1], normalise. By default the backbone's pretrained config gives every value (1/resize is its crop
    fraction); the data set's keys override them (see datamodule.preprocess_of)."""

    img_size: int
    resize: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        # checkpoints written before the interpolation was stored were resized with torchvision's bilinear
        interpolation = str(d["interpolation"]) if "interpolation" in d else "bilinear"
        try:
            p = cls(int(d["img_size"]), float(d["resize"]), tuple(float(v) for v in d["mean"]),
                    tuple(float(v) for v in d["std"]), interpolation)
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"the model's preprocessing {d!r} is incomplete or malformed ({e}); export or "
                                  "train it again with this version of medimg") from None
        p.check()
        return p

    def check(self) -> None:
        """Refuse preprocessing no medimg model has (a crafted or damaged checkpoint or ONNX file)."""
        ok = (0 < self.img_size <= MAX_IMG_SIZE and 0 < self.resize <= 4 and len(self.mean) == len(self.std) == 3
              and all(s > 0 for s in self.std) and self.interpolation in INTERPOLATIONS)
        if not ok:
            raise CheckpointError(f"the model's preprocessing is out of range: img_size={self.img_size} (1.."
                                  f"{MAX_IMG_SIZE}), resize={self.resize} (0..4], mean={list(self.mean)}, "
                                  f"std={list(self.std)} (3 values, std > 0), interpolation={self.interpolation!r} "
                                  f"({', '.join(INTERPOLATIONS)}); is it a file medimg wrote?")

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def transform(self) -> v2.Compose:
        return eval_transform(self.img_size, self.resize, self.mean, self.std, self.interpolation)


def train_transform(img_size: int, crop_scale: Sequence[float], mean: Sequence[float], std: Sequence[float],
                    augment: bool, hflip: float, vflip: float, rotation: float, color_jitter: float,
                    interpolation: str = "bilinear") -> v2.Compose:
    """The seed recipe: RandomResizedCrop, h/v flips, RandomRotation(15), ColorJitter, ImageNet normalisation.

    Geometry runs on uint8 (the crop on the tensor, the rotation through PIL, nearest neighbour as torchvision's
    default); colour jitter is one colour matrix per image fused with normalisation (see color_jitter.py):
    ~1.2 ms per 224 px image on one core against ~5.9 ms for the same steps with torchvision's ColorJitter and
    tensor rotation (benchmarks/loader_cache.py). A probability or strength of 0 leaves that step out. The crop
    is resampled with ``interpolation`` (the backbone's: bilinear, bicubic or nearest).
    """
    if not augment:
        return eval_transform(img_size, 1.0, mean, std, interpolation)
    steps: list = [v2.ToImage(), v2.RandomResizedCrop(img_size, scale=tuple(crop_scale),
                                                      interpolation=interpolation_mode(interpolation),
                                                      antialias=True)]
    if hflip:
        steps.append(v2.RandomHorizontalFlip(hflip))
    if vflip:
        steps.append(v2.RandomVerticalFlip(vflip))
    if rotation:
        steps.append(RandomRotationU8(rotation))
    steps.append(JitterNormalize(mean, std, strength=color_jitter))
    return v2.Compose(steps)


class RandomRotationU8(torch.nn.Module):
    """Rotate a uint8 CxHxW tensor by an angle uniform in [-degrees, degrees] (counter-clockwise, about the
    centre, same size, corners filled with 0, nearest neighbour): torchvision's RandomRotation defaults,
    through PIL's integer path (~0.3 ms at 224 px against ~1.1 ms for the tensor grid sample)."""

    def __init__(self, degrees: float):
        super().__init__()
        self.degrees = float(degrees)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        angle = float(torch.empty(()).uniform_(-self.degrees, self.degrees))
        hwc = img.permute(1, 2, 0).contiguous().numpy()
        out = np.array(Image.fromarray(hwc[..., 0] if hwc.shape[2] == 1 else hwc).rotate(angle))
        return torch.from_numpy(out.reshape(hwc.shape)).permute(2, 0, 1)

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}"


def eval_transform(img_size: int, resize: float, mean: Sequence[float], std: Sequence[float],
                   interpolation: str = "bilinear") -> v2.Compose:
    """Resize the shorter side to img_size*resize (with ``interpolation``), center-crop img_size, normalise."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize(int(round(img_size * resize)), interpolation=interpolation_mode(interpolation), antialias=True),
        v2.CenterCrop(img_size),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(mean=list(mean), std=list(std)),
    ])




def interpolation_mode(name: str) -> v2.InterpolationMode:
    """``bilinear`` | ``bicubic`` | ``nearest`` (timm's names) as torchvision's InterpolationMode."""
    if name not in INTERPOLATIONS:
        raise ValueError(f"interpolation {name!r} is not one of {', '.join(INTERPOLATIONS)}")
    return v2.InterpolationMode(name)
