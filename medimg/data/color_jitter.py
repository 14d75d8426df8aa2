"""Colour jitter as one 3x3 colour matrix per image, fused with normalisation.

torchvision's ``ColorJitter`` costs ~3.4 ms per 224 px image on one CPU core, 2.8 ms of it for the hue
shift (RGB -> HSV -> RGB); on a 2-core machine that is most of a loader worker's time. Brightness, saturation
and a hue rotation are all linear maps of the RGB vector, so they compose into one matrix
``M = hue(h) @ saturation(s) * brightness(b)``; contrast then blends with the image's mean grey level, and
the result is clamped to [0, 1] once and normalised: ~0.3 ms per image.

The factors are drawn as torchvision draws them (brightness, contrast, saturation uniform in
[1 - s, 1 + s], hue uniform in [-h, h] turns). Two differences, both deliberate: the hue shift is a rotation
of the RGB cube about its grey diagonal by the same angle (grey stays grey; HSV's hexcone shift is only
piecewise linear, so the two agree in direction and size but not pixel for pixel), and the ops run in one
fixed order with one clamp at the end instead of a random order with a clamp after each.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

_GREY = torch.tensor([0.2989, 0.587, 0.114])  # luma weights of torchvision's rgb_to_grayscale
_AXIS = torch.full((3,), 3 ** -0.5)  # the grey diagonal of the RGB cube
_CROSS = torch.tensor([[0.0, -1.0, 1.0], [1.0, 0.0, -1.0], [-1.0, 1.0, 0.0]]) * 3 ** -0.5  # [axis]_x


def colour_matrix(brightness: float, saturation: float, hue: float) -> torch.Tensor:
    """3x3 matrix applying brightness (scale), saturation (blend with grey) and a hue rotation (turns)."""
    return colour_matrices(torch.tensor([brightness]), torch.tensor([saturation]), torch.tensor([hue]))[0]


def colour_matrices(brightness: torch.Tensor, saturation: torch.Tensor, hue: torch.Tensor) -> torch.Tensor:
    """``colour_matrix`` for a batch of factors (N each): N x 3 x 3, on the factors' device. The hue turns the
    RGB cube about its grey diagonal (Rodrigues' rotation)."""
    dev, n = brightness.device, len(brightness)
    eye, grey = torch.eye(3, device=dev), _GREY.to(dev).expand(3, 3)
    s = saturation.view(n, 1, 1)
    sat = s * eye + (1.0 - s) * grey
    a = (2.0 * math.pi * hue).view(n, 1, 1)
    axis = _AXIS.to(dev)
    rot = torch.cos(a) * eye + torch.sin(a) * _CROSS.to(dev) + (1.0 - torch.cos(a)) * torch.outer(axis, axis)
    return rot @ sat * brightness.view(n, 1, 1)


def jitter_factors(strength: float, hue: float | None = None) -> tuple[float, float, float, float]:
    """(brightness, contrast, saturation, hue) drawn from torch's random state as torchvision draws them:
    the first three uniform in [1 - strength, 1 + strength], the hue in [-hue, hue] turns (strength / 10)."""
    s, r = strength, torch.rand(4).tolist()
    h = s / 10 if hue is None else hue
    return 1 - s + 2 * s * r[0], 1 - s + 2 * s * r[1], 1 - s + 2 * s * r[2], h * (2 * r[3] - 1)


class JitterNormalize(torch.nn.Module):
    """uint8 CxHxW image -> float32, colour-jittered (when ``strength`` > 0), normalised with mean/std."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], strength: float = 0.0,
                 hue: float | None = None):
        super().__init__()
        self.strength = float(strength)
        self.hue = float(strength / 10 if hue is None else hue)
        if not 0 <= self.strength < 1:
            raise ValueError(f"colour jitter strength must be in [0, 1), got {strength}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue jitter must be in [0, 0.5] turns, got {self.hue}")
        self.mean = torch.tensor(list(mean), dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.tensor(list(std), dtype=torch.float32).view(-1, 1, 1)

    def _factors(self) -> tuple[float, float, float, float]:
        return jitter_factors(self.strength, self.hue)

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if img.dtype != torch.uint8:
            raise TypeError(f"JitterNormalize expects a uint8 image tensor, got {img.dtype}")
        x = img.float().div_(255.0)
        if self.strength > 0 and x.shape[0] == 3:
            b, c, s, h = self._factors()
            x = torch.einsum("ij,jhw->ihw", colour_matrix(b, s, h), x)
            grey_mean = torch.einsum("j,jhw->hw", _GREY, x).mean()
            x = x.mul_(c).add_((1.0 - c) * grey_mean).clamp_(0.0, 1.0)
        return x.sub_(self.mean).div_(self.std)

    def extra_repr(self) -> str:
        return f"strength={self.strength}, hue={self.hue}"
