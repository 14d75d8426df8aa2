"""Explanations that can be trusted, measured: localisation against ground-truth masks, the model
randomisation test and ROAD faithfulness, on a data set with masks (the built-in synthetic lesions).

For every layer asked for, Grad-CAM maps of the trained model and of the same architecture with
randomised weights are scored with the pointing game and the energy in mask (see ``localisation``);
a map that scores about the same for both explains nothing about what the model learned. ROAD
(see ``faithfulness``) then asks whether the trained model's own prediction depends on the pixels its
map ranks highest, compared with the map of the randomised model.

Entry point: ``python -m medimg.explain ckpt_path=... [dataset overrides as in training]``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torchvision.transforms import v2

from medimg.data.datamodule import MedImageDataModule
from medimg.data.readers import read_image
from medimg.data.synthetic import mask_path
from medimg.data.transforms import Preprocess
from medimg.errors import DataError, MissingDataError
from medimg.explain.faithfulness import DEFAULT_PERCENTILES, road_scores
from medimg.explain.gradcam import (
    cam_reshape,
    compute_cams,
    default_layer_of,
    denormalise,
    overlay,
    resolve_layer,
)
from medimg.explain.localisation import localisation_scores
from medimg.files import save_figure

log = logging.getLogger(__name__)


def randomised_copy(model: nn.Module, seed: int = 0) -> nn.Module:
    """The same architecture with freshly initialised weights (the model randomisation test)."""
    from medimg.models.classifier import ImageClassifier

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        rand = ImageClassifier(**{**dict(model.hparams), "weights": None})
    device = next(model.parameters()).device
    return rand.eval().to(device)


def load_masked_split(dm: MedImageDataModule, preprocess: Preprocess, split: str = "test",
                      max_images: int | None = None, seed: int = 0):
    """Images (normalised, as the model sees them), boolean masks, class indices and paths of ``split``."""
    dm.prepare_data()
    table = dm.load_table()
    part = table[table["split"] == split]
    if len(part) == 0:
        raise DataError(f"the {split} split of {dm.ds.name} has no images")
    if max_images and max_images < len(part):
        part = part.sample(n=int(max_images), random_state=seed).sort_index()
    size, resize = preprocess.img_size, preprocess.resize
    tf = preprocess.transform()
    mask_tf = v2.Compose([v2.Resize(int(round(size * resize)), interpolation=v2.InterpolationMode.NEAREST),
                          v2.CenterCrop(size)])
    images, masks, paths = [], [], []
    for p in part["path"]:
        mp = mask_path(p)
        if not mp.is_file():
            raise MissingDataError(f"no mask for {p} (expected {mp}); the localisation check needs a data set "
                                    "with masks, such as dataset=synthetic")
        images.append(tf(read_image(p, limits=dm.limits)))  # the data set's caps, from the header
        m = torch.from_numpy(np.array(read_image(mp, limits=dm.limits).convert("L")) > 127)[None]
        masks.append(mask_tf(m)[0].numpy())
        paths.append(str(p))
    labels = [dm.class_names.index(c) for c in part["label"]]
    return torch.stack(images), np.stack(masks), labels, paths


def _batched_cams(model, images, targets, method, layer, batch_size) -> np.ndarray:
    out = []
    for i in range(0, len(images), batch_size):
        tg = None if targets is None else targets[i : i + batch_size]
        out.append(compute_cams(model, images[i : i + batch_size], tg, method=method, layer=layer))
    return np.concatenate(out)


def _predict(model, images, batch_size) -> np.ndarray:
    device = next(model.parameters()).device
    with torch.no_grad():
        return np.concatenate([model(images[i : i + batch_size].to(device)).float().argmax(-1).cpu().numpy()
                               for i in range(0, len(images), batch_size)])


def feature_size(model: nn.Module, layer: str | None, img_size: int) -> tuple[int, int]:
    """Height and width of the map Grad-CAM gets from ``layer`` (None: the default) for an ``img_size`` input."""
    shape: list[int] = []
    module = resolve_layer(model, layer, img_size)
    reshape = cam_reshape(model) or (lambda o: o)
    handle = module.register_forward_hook(lambda _m, _i, o: shape.extend(reshape(o).shape[-2:]))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, img_size, img_size, device=next(model.parameters()).device))
    finally:
        handle.remove()
    return int(shape[0]), int(shape[1])


def sanity_report(
    model: nn.Module,
    images: torch.Tensor,
    masks: np.ndarray,
    labels: Sequence[int],
    layers: Sequence[str | None] = (None,),
    methods: Sequence[str] = ("gradcam", "gradcam++"),
    target: str = "label",
    tolerance: int = 0,
    seed: int = 0,
    road_images: int = 50,
    road_percentiles: Sequence[int] = DEFAULT_PERCENTILES,
    batch_size: int = 32,
) -> dict[str, Any]:
    """For every method and layer: localisation of the trained and of the randomised model, and ROAD of
    both maps on the trained model. ``target``: explain the true class (``label``) or each model's own
    prediction (``predicted``). A layer None is the backbone's default for the images' size (reported by
    name, with ``default: true``). The maps themselves are kept under ``report["_cams"][(method, layer)]``."""
    if target not in ("label", "predicted"):
        raise ValueError(f"target={target!r}: choose label or predicted")
    model.eval()
    rand = randomised_copy(model, seed)
    preds = _predict(model, images, batch_size)
    rand_preds = _predict(rand, images, batch_size)
    report: dict[str, Any] = {
        "n_images": len(images), "target": target, "tolerance_px": tolerance, "img_size": int(images.shape[-1]),
        "accuracy": float(np.mean(preds == np.asarray(labels))), "maps": [], "_cams": {},
    }
    n_road = min(int(road_images), len(images))
    for method in methods:
        for asked in layers:
            layer = asked or default_layer_of(model, int(images.shape[-1]))
            fs = feature_size(model, layer, images.shape[-1])
            entry: dict[str, Any] = {"method": method, "layer": layer, "default": asked is None,
                                     "feature_size": list(fs), "resolution_ceiling": resolution_ceiling(masks, fs)}
            cams = {}
            for name, m, own in (("trained", model, preds), ("randomised", rand, rand_preds)):
                tg = list(labels) if target == "label" else own.tolist()
                cams[name] = _batched_cams(m, images, tg, method, layer, batch_size)
                entry[name] = localisation_scores(cams[name], masks, tolerance)
            if n_road:
                idx = np.unique(np.linspace(0, len(images) - 1, n_road).round().astype(int))  # spread over classes
                road_targets = [int(labels[i]) for i in idx] if target == "label" else preds[idx].tolist()
                entry["road"] = {"n": len(idx), "percentiles": list(road_percentiles)}
                for name in ("trained", "randomised"):
                    r = road_scores(model, images[idx], cams[name][idx], road_targets, road_percentiles, seed)
                    entry["road"][f"{name}_map"] = {k: float(np.mean(v)) for k, v in r.items()}
            report["maps"].append(entry)
            report["_cams"][(method, layer)] = cams
            log.info("%s %s done", method, layer)
    return report


def resolution_ceiling(masks: np.ndarray, feature_hw: Sequence[int]) -> float:
    """The best pointing-game score a map of ``feature_hw`` cells can reach once upsampled bilinearly: its
    maximum always sits on a cell centre, so this is the share of masks that contain at least one centre."""
    h, w = masks.shape[-2:]
    fh, fw = feature_hw
    ys = np.clip(((np.arange(fh) + 0.5) * h / fh - 0.5).round().astype(int), 0, h - 1)
    xs = np.clip(((np.arange(fw) + 0.5) * w / fw - 0.5).round().astype(int), 0, w - 1)
    return float(np.mean([m[np.ix_(ys, xs)].any() for m in masks]))


def format_report(report: dict[str, Any]) -> str:
    w = max([7, *(len(str(e["layer"])) for e in report["maps"])])
    lines = [f"Grad-CAM sanity check (target={report['target']}, pointing tolerance {report['tolerance_px']} px): "
             f"{report['n_images']} images at {report['img_size']} px, model accuracy {report['accuracy']:.3f}",
             f"{'method':<10} {'layer':<{w}} {'map':>5} {'ceil':>5} {'model':<10} {'pointing':>8} {'energy':>7} "
             f"{'chance':>6} {'empty':>5} {'ROAD':>7} {'MoRF':>7} {'LeRF':>7}"]
    for e in report["maps"]:
        fs = "x".join(str(v) for v in e["feature_size"])
        for name in ("trained", "randomised"):
            s, r = e[name], (e.get("road") or {}).get(f"{name}_map")
            road = f"{r['combined']:7.3f} {r['morf']:7.3f} {r['lerf']:7.3f}" if r else ""
            lines.append(f"{e['method']:<10} {str(e['layer']):<{w}} {fs:>5} {e['resolution_ceiling']:5.2f} {name:<10} "
                         f"{s['pointing_game']:8.3f} {_f(s['energy_in_mask'])} {s['chance']:6.3f} "
                         f"{s['empty_cams']:5d} {road}")
    lines.append("ceil: best pointing game a map of that size can reach; chance: mean mask area (a uniform map's "
                 "energy in mask); ROAD: the trained model's probability change when the pixels ranked by the map "
                 "are removed, combined = (LeRF - MoRF)/2, higher = more faithful")
    return "\n".join(lines)


def _f(v: float) -> str:
    return f"{'nan':>7}" if math.isnan(v) else f"{v:7.3f}"


def save_examples(path: str | Path, report: dict[str, Any], images: torch.Tensor, masks: np.ndarray,
                  preprocess: Preprocess, count: int = 6) -> Path:
    """A grid: per example image, the mask, then the trained and randomised maps of every method and layer."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    keys = list(report["_cams"])
    picks = np.unique(np.linspace(0, len(images) - 1, min(count, len(images))).round().astype(int))  # all classes
    cols = 2 + 2 * len(keys)
    fig, axes = plt.subplots(len(picks), cols, figsize=(1.7 * cols, 1.8 * len(picks)), squeeze=False)
    for row, i in enumerate(picks):
        rgb = denormalise(images[i], preprocess.mean, preprocess.std)
        panels = [(rgb, "image"), (masks[i], "mask")]
        for method, layer in keys:
            for name in ("trained", "randomised"):
                panels.append((overlay(rgb, report["_cams"][(method, layer)][name][i]),
                               f"{method} {layer}\n{name}"))
        for ax, (img, title) in zip(axes[row], panels):
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
            ax.axis("off")
            if row == 0:
                ax.set_title(title, fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=90)
    plt.close(fig)
    return Path(path)
