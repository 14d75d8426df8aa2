"""The training augmentation of a whole uint8 batch at once, on the device the model trains on.

The loader sends each image as it is stored in the decoded cache (uint8, its cached size) together with its own
random parameters, drawn per image from its seed exactly as the CPU transform draws them (data/transforms.py:
torchvision's RandomResizedCrop, the flips, RandomRotation, the colour jitter of data/color_jitter.py). After
the transfer, ``augment_batch`` applies them in one resampling: the crop, the flips and the rotation compose into
one affine map per image (``grid_sample``; the rotation's corners are 0 as torchvision fills them), then colour
jitter as one 3x3 matrix per image, one clamp, and the normalisation. Every image gets its own parameters
(torchvision's v2 transforms on a batch tensor draw one set for the whole batch).

Two differences from the CPU path, both small by construction: the crop is resampled without antialiasing
(the cache stores images at ``dataset.cache_size`` = 1.15 x ``img_size``, so a crop shrinks by 1.3x at most),
and the rotation is part of the same bilinear (or bicubic) resampling instead of a second nearest-neighbour
pass. tests/test_batch_augment.py compares the output statistics with the CPU transform's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.transforms import RandomResizedCrop

from medimg.data.color_jitter import _GREY, colour_matrices, jitter_factors

RATIO = (3 / 4, 4 / 3)  # RandomResizedCrop's default aspect ratio range, as the CPU transform uses it
# a parameter row (one per image): top, left, height, width (crop box, source pixels), hflip, vflip (0/1),
# angle (degrees), brightness, contrast, saturation, hue (turns)


@dataclass(frozen=True)
class AugmentSpec:
    """The training augmentation's settings (the data set's keys) and the run's preprocessing. Without
    ``augment`` the geometry is the evaluation transform's: the centred square of ``crop_fraction`` of the
    shorter side (1 / the preprocessing's resize), resampled to ``img_size``."""

    img_size: int
    augment: bool
    crop_scale: tuple[float, float]
    hflip: float
    vflip: float
    rotation: float
    color_jitter: float
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str
    crop_fraction: float = 1.0

    def draw(self, height: int, width: int) -> list[float]:
        """One image's parameters from torch's current random state (the caller seeds it per image), drawn in
        the order and with the distributions of the CPU transform."""
        if not self.augment:  # the eval transform: the centred square of crop_fraction, nothing else
            if self.crop_fraction == 1.0:
                side = min(height, width)
                return [(height - side) // 2, (width - side) // 2, side, side, 0, 0, 0.0, 1.0, 1.0, 1.0, 0.0]
            side = min(height, width) * self.crop_fraction
            return [(height - side) / 2, (width - side) / 2, side, side, 0, 0, 0.0, 1.0, 1.0, 1.0, 0.0]
        shape_only = torch.empty(1).expand(1, height, width)  # what get_params reads of an image: its size
        i, j, h, w = RandomResizedCrop.get_params(shape_only, list(self.crop_scale), list(RATIO))
        hf = float(torch.rand(1) < self.hflip) if self.hflip else 0.0
        vf = float(torch.rand(1) < self.vflip) if self.vflip else 0.0
        angle = float(torch.empty(1).uniform_(-self.rotation, self.rotation)) if self.rotation else 0.0
        b, c, s, hue = jitter_factors(self.color_jitter) if self.color_jitter else (1.0, 1.0, 1.0, 0.0)
        return [i, j, h, w, hf, vf, angle, b, c, s, hue]


def _grid(params: torch.Tensor, size: int, canvas_hw: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(sampling grid N x size x size x 2 in the canvas's normalised coordinates, N x 1 x size x size mask of the
    output pixels inside the rotated crop, or None when no image is rotated). Each output pixel p samples the
    pre-rotation square at q = R^-1 p (counter-clockwise on screen, y pointing down), flipped, then mapped into
    the crop box; written out as broadcast multiply-adds (``affine_grid``'s batched matmul is 10x slower on CPU)."""
    n, dev = len(params), params.device
    p = params.to(torch.float32)
    centres = (torch.arange(size, device=dev, dtype=torch.float32) * 2 + 1) / size - 1
    xs, ys = centres.view(1, 1, size), centres.view(1, size, 1)
    a = torch.deg2rad(p[:, 6]).view(n, 1, 1)
    cos, sin = torch.cos(a), torch.sin(a)
    height, width = canvas_hw
    top, left, h, w = (p[:, k].view(n, 1, 1) for k in range(4))
    sx = w / width * (1 - 2 * p[:, 4].view(n, 1, 1))  # q in [-1, 1] -> the box (flipped), canvas coordinates
    sy = h / height * (1 - 2 * p[:, 5].view(n, 1, 1))
    ox, oy = (2 * left + w) / width - 1, (2 * top + h) / height - 1
    grid = torch.empty(n, size, size, 2, device=dev)
    grid[..., 0] = (sx * cos) * xs - (sx * sin) * ys + ox  # qx = cos x - sin y
    grid[..., 1] = (sy * sin) * xs + (sy * cos) * ys + oy  # qy = sin x + cos y
    if not bool((a != 0).any()):
        return grid, None
    qx, qy = cos * xs - sin * ys, sin * xs + cos * ys
    return grid, ((qx.abs() <= 1) & (qy.abs() <= 1)).unsqueeze(1)


def augment_batch(images: torch.Tensor, params: torch.Tensor, spec: AugmentSpec) -> torch.Tensor:
    """uint8 N x 3 x H x W (each image at the top left of the canvas, its edge replicated beyond) and N x 11
    parameters -> float32 N x 3 x img_size x img_size, augmented and normalised, on ``images``' device.

    After the one resampling, colour jitter, contrast, the clamp to [0, 1] and the normalisation are one
    per-image affine colour map and one clamp: ``clamp(A x + b)`` with A = c M / (255 std), b = ((1 - c) g -
    mean) / std (M the colour matrix, c the contrast, g the jittered image's mean grey level) and the clamp's
    bounds normalised alike, so the batch is read twice after sampling instead of once per step."""
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"augment_batch expects a uint8 N x 3 x H x W batch, got {images.dtype} {tuple(images.shape)}")
    dev, n, size = images.device, len(images), spec.img_size
    with torch.no_grad():
        p = params.to(dev, torch.float32)
        grid, inside = _grid(p, size, (images.shape[2], images.shape[3]))
        x = F.grid_sample(images.float(), grid, mode=spec.interpolation, padding_mode="border", align_corners=False)
        if spec.interpolation == "bicubic":
            x = x.clamp_(0, 255)  # bicubic overshoots; bilinear and nearest stay within their inputs
        if inside is not None:
            x = x.mul_(inside)
        mean = torch.tensor(spec.mean, device=dev).view(1, 3, 1)
        std = torch.tensor(spec.std, device=dev).view(1, 3, 1)
        colour = torch.eye(3, device=dev).expand(n, 3, 3) / 255.0
        shift = torch.zeros(n, 3, 1, device=dev)
        if spec.augment and spec.color_jitter:
            colour = colour_matrices(p[:, 7], p[:, 9], p[:, 10]) / 255.0
            grey = torch.einsum("j,nji,ni->n", _GREY.to(dev), colour, x.mean(dim=(2, 3))).view(n, 1, 1)
            c = p[:, 8].view(n, 1, 1)
            colour, shift = colour * c, (1.0 - c) * grey.expand(n, 3, 1)
        out = torch.baddbmm((shift - mean) / std, colour / std, x.reshape(n, 3, -1))
        return out.clamp_(-mean / std, (1 - mean) / std).view(n, 3, size, size)
