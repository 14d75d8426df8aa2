"""Test-time augmentation: the views of a batch whose probabilities are averaged.

Views act on the prepared (resized, normalised, square) image tensor ``(B, C, H, W)``. ``identity`` is
always evaluated; ``tta_views`` adds flips (``hflip``, ``vflip``) and, for images without a canonical
orientation such as dermoscopy, rotations (``rot90``, ``rot180``, ``rot270``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

VIEWS = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: torch.rot90(x, 1, (-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, (-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, (-2, -1)),
}


def resolve_views(enabled: bool, views: Sequence[str] | None) -> list[str]:
    """``["identity"]`` without TTA; with it, identity followed by the requested views (no duplicates)."""
    if not enabled:
        return ["identity"]
    out = ["identity"]
    for v in views or ("hflip", "vflip"):
        if v not in VIEWS:
            raise ValueError(f"unknown tta view {v!r} in tta_views; choose from {sorted(VIEWS)}")
        if v not in out:
            out.append(v)
    return out


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    return VIEWS[view](x)
