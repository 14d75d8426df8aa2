"""Does a saliency map point at the evidence? Scores against a ground-truth mask, as pure functions.

- pointing game: a hit when the map's maximum lies inside the mask (optionally within ``tolerance`` pixels
  of it). A constant map points nowhere and counts as a miss.
- energy in mask: the share of the map's total mass that falls inside the mask. A uniform map scores the
  mask's area fraction, which is therefore the chance level for both scores.
"""

from __future__ import annotations

import math

import numpy as np


def _check(cam: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cam, mask = np.asarray(cam, dtype=np.float64), np.asarray(mask).astype(bool)
    if cam.shape != mask.shape or cam.ndim != 2:
        raise ValueError(f"cam and mask must be 2-D arrays of one shape, got {cam.shape} and {mask.shape}")
    return cam, mask


def pointing_hit(cam: np.ndarray, mask: np.ndarray, tolerance: int = 0) -> bool:
    """True when the CAM's maximum (first in raster order on exact ties) lies in the mask, or within
    ``tolerance`` pixels of it; False for a constant CAM."""
    cam, mask = _check(cam, mask)
    if not np.isfinite(cam).all():
        raise ValueError("cam contains NaN or infinite values")
    if cam.max() <= cam.min():
        return False
    y, x = np.unravel_index(int(np.argmax(cam)), cam.shape)
    if tolerance <= 0:
        return bool(mask[y, x])
    ys, xs = np.nonzero(mask)
    if len(ys) == 0:
        return False
    return bool(((ys - y) ** 2 + (xs - x) ** 2).min() <= tolerance**2)


def energy_in_mask(cam: np.ndarray, mask: np.ndarray) -> float:
    """Sum of the (non-negative) CAM inside the mask over its total; NaN when the CAM is all zero."""
    cam, mask = _check(cam, mask)
    cam = np.clip(cam, 0, None)
    total = cam.sum()
    if total <= 0:
        return math.nan
    return float(cam[mask].sum() / total)


def localisation_scores(cams: np.ndarray, masks: np.ndarray, tolerance: int = 0) -> dict[str, float]:
    """Pointing-game accuracy and mean energy in mask over a batch ``(N, H, W)``, with the chance level
    (mean mask area fraction) and the number of all-zero CAMs (misses, left out of the energy mean)."""
    cams, masks = np.asarray(cams), np.asarray(masks).astype(bool)
    if cams.shape != masks.shape or cams.ndim != 3 or len(cams) == 0:
        raise ValueError(f"cams and masks must be non-empty (N, H, W) arrays of one shape, got "
                         f"{cams.shape} and {masks.shape}")
    hits = [pointing_hit(c, m, tolerance) for c, m in zip(cams, masks)]
    energies = np.array([energy_in_mask(c, m) for c, m in zip(cams, masks)])
    finite = energies[np.isfinite(energies)]
    return {
        "n": int(len(cams)),
        "pointing_game": float(np.mean(hits)),
        "energy_in_mask": float(finite.mean()) if len(finite) else math.nan,
        "chance": float(masks.reshape(len(masks), -1).mean(axis=1).mean()),
        "empty_cams": int((~np.isfinite(energies)).sum()),
    }
