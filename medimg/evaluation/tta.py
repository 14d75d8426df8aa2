"""Test-time augmentation: the views of a batch whose probabilities are averaged.

Views act on the prepared (resized, normalised, square) image tensor ``(B, C, H, W)``. ``identity`` is
always evaluated; ``tta_views`` adds flips (``hflip``, ``vflip``) and, for images without a canonical
orientation such as dermoscopy, rotations (``rot90``, ``rot180``, ``rot270``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from medimg.errors import ConfigError
from medimg.names import TTA_VIEWS, same_names

VIEWS = {
    "identity": lambda x: x,
    "hflip": lambda x: x.flip(-1),
    "vflip": lambda x: x.flip(-2),
    "rot90": lambda x: torch.rot90(x, 1, (-2, -1)),
    "rot180": lambda x: torch.rot90(x, 2, (-2, -1)),
    "rot270": lambda x: torch.rot90(x, 3, (-2, -1)),
}
same_names(VIEWS, TTA_VIEWS, "test-time augmentation views")


def resolve_views(enabled: bool, views: Sequence[str] | None) -> list[str]:
    """``["identity"]`` without TTA; with it, identity followed by the requested views (no duplicates)."""
    if not enabled:
        return ["identity"]
    out = ["identity"]
    for v in views or ("hflip", "vflip"):
        if v not in VIEWS:
            raise ConfigError(f"tta_views: unknown view {v!r}; choose from {', '.join(TTA_VIEWS[1:])}")
        if v not in out:
            out.append(v)
    return out


def apply_view(x: torch.Tensor, view: str) -> torch.Tensor:
    return VIEWS[view](x)


def averaged_probs(probs_of: Callable[[torch.Tensor], Any], x: torch.Tensor, views: Sequence[str]) -> Any:
    """The probabilities ``probs_of`` gives each view of ``x`` (``resolve_views``), averaged: calibrated per
    view, then averaged, as ``SplitOutputs.probs`` does for evaluate."""
    return sum(probs_of(apply_view(x, v)) for v in views) / len(views)
