"""Error gallery: per true class, the most confident mistakes and the least confident correct predictions,
each shown as the image and its Grad-CAM overlay for the predicted class.

* most confident mistakes ("top losses"): images of the class that the model got wrong, highest loss first,
  the loss being -log P(true class);
* least confident correct predictions: images of the class that the model got right, lowest P(true class)
  first (the correct calls it nearly missed).

``select_gallery`` is pure (probabilities, targets and decisions in, positions out); ``gallery_pictures``
reads the chosen images through the evaluation dataset by row index and computes their CAMs
(``medimg.explain.gradcam.compute_cams``); ``gallery_figures`` draws one figure per kind.

An empty map (all zero, or spanning under ``EMPTY_RANGE`` of the colour scale, so that it draws as a flat
overlay) explains nothing. Grad-CAM gives one whenever the class score's gradients, averaged over the map,
weigh the layer's activations to a sum below zero everywhere (the ReLU then zeroes it): about one image in ten.
Such an image's map is taken again with ``FALLBACKS`` in turn (methods that keep only the positive gradients),
and its panel names the method that drew it and that the configured one was empty; when every method's map is
empty the panel says "empty <method> map".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medimg.explain.gradcam import compute_cams, denormalise, overlay  # noqa: E402

KINDS = {"mistakes": "most confident mistakes (highest loss)",
         "unsure_correct": "least confident correct predictions"}
FALLBACKS = ("gradcam++", "layercam")  # tried in turn on an image whose map is empty
EMPTY_RANGE = 0.01  # a map spanning less than this (of [0, 1]) is empty

log = logging.getLogger(__name__)


class Picture(NamedTuple):
    """A gallery image and its CAM of the predicted class, with the method that drew the map (None: every
    method tried gave an empty one; the map is then the configured method's)."""

    rgb: np.ndarray  # (H, W, 3) in [0, 1]
    cam: np.ndarray  # (H, W) in [0, 1]
    method: str | None


@dataclass
class Gallery:
    """The chosen positions ``{kind: {class index: [position, ...]}}`` (positions in the evaluation order),
    the decisions and probabilities they are shown with, and per position the picture and its CAM."""

    selection: dict[str, dict[int, list[int]]]
    probs: torch.Tensor
    targets: torch.Tensor
    preds: torch.Tensor
    pictures: dict[int, Picture] = field(default_factory=dict)
    method: str = ""


def select_gallery(probs: torch.Tensor, targets: torch.Tensor, preds: torch.Tensor,
                   per_class: int) -> dict[str, dict[int, list[int]]]:
    """``{"mistakes": {k: [...]}, "unsure_correct": {k: [...]}}``: up to ``per_class`` positions per true class
    ``k`` (ties broken by position)."""
    p_true = probs.double().gather(1, targets.long().view(-1, 1)).squeeze(1).cpu().numpy()
    y, d = targets.cpu().numpy(), preds.cpu().numpy()
    out: dict[str, dict[int, list[int]]] = {"mistakes": {}, "unsure_correct": {}}
    for k in range(probs.shape[1]):
        wrong = np.flatnonzero((y == k) & (d != k))
        right = np.flatnonzero((y == k) & (d == k))
        # lexsort sorts by the last key first: p_true ascending, then position
        out["mistakes"][k] = [int(i) for i in wrong[np.lexsort((wrong, p_true[wrong]))][:per_class]]
        out["unsure_correct"][k] = [int(i) for i in right[np.lexsort((right, p_true[right]))][:per_class]]
    return out


def is_empty(cam: np.ndarray) -> bool:
    """Whether a CAM shows nothing: not finite, or spanning less than ``EMPTY_RANGE``."""
    return not np.isfinite(cam).all() or float(cam.max() - cam.min()) < EMPTY_RANGE


def cams_with_fallback(model, images: torch.Tensor, targets: list[int], method: str,
                       layer: str | None) -> tuple[np.ndarray, list[str | None]]:
    """The CAMs of ``images`` by ``method``, an empty one replaced by the first of ``FALLBACKS`` that gives a
    map; with the method that drew each (None where all were empty)."""
    cams = compute_cams(model, images, targets=targets, method=method, layer=layer)
    used: list[str | None] = [None if is_empty(c) else method for c in cams]
    empty = used.count(None)
    for fallback in (m for m in FALLBACKS if m != method):
        todo = [i for i, u in enumerate(used) if u is None]
        if not todo:
            break
        again = compute_cams(model, images[todo], targets=[targets[i] for i in todo], method=fallback, layer=layer)
        for i, cam in zip(todo, again):
            if not is_empty(cam):
                cams[i], used[i] = cam, fallback
    if empty:
        log.info("error gallery: %d of %d %s maps are empty; %d drawn with another method, %d left empty",
                 empty, len(cams), method, empty - used.count(None), used.count(None))
    return cams, used


def gallery_pictures(model, dataset, rows: torch.Tensor, positions: Sequence[int], preds: torch.Tensor,
                     mean: Sequence[float], std: Sequence[float], method: str,
                     layer: str | None) -> dict[int, Picture]:
    """``{position: Picture}``: the RGB image, its CAM of the predicted class (``FALLBACKS`` for an empty map)
    and the method that drew it; images read as ``dataset[row]``."""
    positions = list(dict.fromkeys(int(p) for p in positions))
    if not positions:
        return {}
    images = torch.stack([dataset[int(rows[p])][0] for p in positions])
    cams, used = cams_with_fallback(model, images, [int(preds[p]) for p in positions], method, layer)
    return {p: Picture(denormalise(img, mean, std), cam, u) for p, img, cam, u in zip(positions, images, cams, used)}


def cam_title(method: str, used: str | None) -> str:
    """The overlay's title: the method that drew the map, and why when it is not ``method``."""
    if used == method:
        return f"{method} (predicted class)"
    if used is None:
        tried = ", ".join(m for m in FALLBACKS if m != method)
        return f"empty {method} map\n({tried}: empty too)"
    return f"{used} (predicted class)\n{method} map empty"


def _caption(g: Gallery, pos: int, class_names: Sequence[str]) -> str:
    t, d = int(g.targets[pos]), int(g.preds[pos])
    return (f"true {class_names[t]} ({float(g.probs[pos, t]):.2f})\n"
            f"pred {class_names[d]} ({float(g.probs[pos, d]):.2f})")


def gallery_figure(g: Gallery, kind: str, class_names: Sequence[str]) -> Figure:
    """One row per class, each chosen image beside its overlay (titled by ``cam_title``); an empty row says
    there is none."""
    per_class = max([len(v) for v in g.selection[kind].values()] + [1])
    fig, axes = plt.subplots(len(class_names), 2 * per_class, squeeze=False, layout="constrained",
                             figsize=(1.9 * 2 * per_class, 2.2 * len(class_names)))
    for k, name in enumerate(class_names):
        chosen = g.selection[kind].get(k, [])
        for j in range(per_class):
            ax_img, ax_cam = axes[k, 2 * j], axes[k, 2 * j + 1]
            for ax in (ax_img, ax_cam):
                ax.set_xticks([])
                ax.set_yticks([])
            if j >= len(chosen) or chosen[j] not in g.pictures:
                ax_img.axis("off")
                ax_cam.axis("off")
                if j == 0:
                    ax_img.text(0.0, 0.5, f"{name}: none", fontsize=8, transform=ax_img.transAxes)
                continue
            rgb, cam, used = g.pictures[chosen[j]]
            ax_img.imshow(rgb)
            ax_cam.imshow(overlay(rgb, cam))
            ax_img.set_title(_caption(g, chosen[j], class_names), fontsize=7)
            ax_cam.set_title(cam_title(g.method, used), fontsize=7)
            if j == 0:
                ax_img.set_ylabel(name, fontsize=9)
    fig.suptitle(f"{KINDS[kind]}, per true class", fontsize=10)
    return fig


def gallery_figures(g: Gallery, class_names: Sequence[str]) -> dict[str, Figure]:
    """``{"error_gallery_mistakes": fig, "error_gallery_unsure_correct": fig}``."""
    return {f"error_gallery_{kind}": gallery_figure(g, kind, class_names) for kind in KINDS}
