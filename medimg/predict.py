"""Predict with a trained checkpoint: ``python -m medimg.predict ckpt_path=<ckpt> input=<image or folder>``.

Reads top to bottom: load the model (PyTorch from the checkpoint, or onnxruntime from an exported
``model.onnx``); find the images (a folder is searched recursively, non-image files are skipped and
counted); prepare each as the evaluation split was (size and normalisation stored in the checkpoint);
print the top-k classes with calibrated probabilities, the conformal set and "refer" for an image the model
is not confident enough to answer for (with the rules the checkpoint stores); write ``predictions.csv``
(evaluate's layout, ``medimg.evaluation.predictions.predictions_frame``, without ``label`` and
``p_uncalibrated_*``); with ``gradcam=true`` also a PNG per image with the image, the heat map and the overlay
side by side.

``gradcam=true`` / ``gradcam=false`` are shorthands for ``gradcam.enabled=...``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from medimg.cli import CONF_DIR, run_task
from medimg.config.commands import PredictSettings
from medimg.config.overrides import guard_command_line
from medimg.config.schema import read
from medimg.data.inputs import collect_images, image_batches
from medimg.data.readers import ImageLimits
from medimg.engines import decide, open_engine
from medimg.errors import ConfigError
from medimg.evaluation.conformal import Conformal
from medimg.evaluation.predictions import predictions_frame, write_predictions
from medimg.evaluation.selective import ReferralRule, confidences
from medimg.evaluation.tta import averaged_probs, resolve_views
from medimg.files import writable_folder
from medimg.inference import UNCALIBRATED, resolve_device

log = logging.getLogger("medimg.predict")


@dataclass
class PredictResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)              # non-image files
    unreadable: dict[str, str] = field(default_factory=dict)      # image files that could not be decoded
    figures: list[str] = field(default_factory=list)
    csv_path: str | None = None
    calibration_note: str = ""


def predict(cfg: dict[str, Any]) -> PredictResult:
    """Run a prediction config (see conf/predict.yaml) and return what it found and wrote."""
    p = read(PredictSettings, cfg, "")
    device = resolve_device(p.device)
    engine = open_engine(p.engine, p.ckpt_path, p.onnx_path, device, p.precision, p.threads)
    cams = CamWriter(p, engine, device) if p.gradcam.enabled else None
    root = Path(p.input).expanduser()
    paths, skipped = collect_images(root)
    out_dir = writable_folder(p.output_dir, "output_dir=<folder>")  # before any work whose results go there
    result = PredictResult(skipped=[str(s) for s in skipped], calibration_note=engine.calibration_note)
    k = max(1, min(p.top_k, len(engine.class_names)))
    views = resolve_views(p.tta, p.tta_views)
    print(f"probabilities: {engine.calibration_note}; engine={engine.name}"
          + (f", averaged over the views {', '.join(views)}" if p.tta else ""))
    binary = engine.threshold is not None and len(engine.class_names) == 2
    if binary:
        pos = engine.class_names[1]
        print(f"decision: {pos} when P({pos}) >= {engine.threshold:.4g} (operating threshold)")
    if engine.conformal is not None:
        print(f"prediction sets: {engine.conformal.describe()}")
    if engine.referral is not None:
        print(f"referral: {engine.referral.describe()}")
    limits = ImageLimits(p.max_image_pixels, p.max_aspect_ratio)
    batches = image_batches(paths, engine.preprocess.transform(), p.batch_size, limits, result.unreadable,
                            single=root.is_file())
    done: list[tuple[list[Path], np.ndarray, list[int]]] = []
    for batch_paths, x in batches:
        probs = averaged_probs(engine.probs, x, views)
        decisions = decide(probs, engine.threshold)
        figures = cams.write(x, batch_paths, root, probs, decisions) if cams is not None else []
        result.figures += [str(f) for f in figures]
        done.append((batch_paths, probs, decisions))
        named = engine.conformal.named_sets(torch.from_numpy(probs), engine.class_names) if engine.conformal else []
        refer = engine.referral.refer(confidences(probs, decisions)) if engine.referral else np.zeros(len(probs), bool)
        for i, path in enumerate(batch_paths):
            rel = path.name if root.is_file() else str(path.relative_to(root))
            order = np.argsort(-probs[i])[:k]
            decided = f"  -> {engine.class_names[decisions[i]]}" if binary else ""
            print(f"{rel}: " + " | ".join(f"{engine.class_names[j]} {probs[i, j]:.3f}" for j in order) + decided
                  + (f"  set: {{{', '.join(named[i])}}}" if engine.conformal is not None else "")
                  + ("  refer" if refer[i] else ""))
    frame = predictions_of(done, engine.class_names, engine.conformal, engine.referral)
    result.rows = frame.to_dict("records")
    result.csv_path = str(write_predictions(out_dir / "predictions.csv", frame))
    summary(result, out_dir)
    return result


def predictions_of(batches: list[tuple[list[Path], np.ndarray, list[int]]], class_names: list[str],
                   conformal: Conformal | None = None, referral: ReferralRule | None = None) -> pd.DataFrame:
    """The ``predictions_frame`` of the predicted batches (no truth; calibrated probabilities only; the
    prediction sets of ``conformal``, the referrals of ``referral``)."""
    paths = [p for b in batches for p in b[0]]
    probs = np.concatenate([b[1] for b in batches]) if batches else np.zeros((0, len(class_names)))
    decisions = [d for b in batches for d in b[2]]
    sets = conformal.sets(torch.from_numpy(probs)).numpy() if conformal is not None else None
    refer = referral.refer(confidences(probs, np.asarray(decisions, np.int64))) if referral is not None else None
    return predictions_frame(paths, class_names, probs, decisions, sets=sets, refer=refer)


class CamWriter:
    """``gradcam=true``: a PNG per image (image | heat map | overlay) under ``<output_dir>/gradcam``."""

    def __init__(self, p: PredictSettings, engine, device: str):
        self.trained = engine.trained_model(p.ckpt_path, device)
        self.g, self.out_dir = p.gradcam, Path(p.output_dir) / "gradcam"
        names = self.trained.class_names
        if self.g.target is not None and str(self.g.target) not in names:
            raise ConfigError(f"gradcam.target={self.g.target!r} is not a class of this model; choose one of "
                              f"{names} or null (the predicted class)")

    def write(self, x: torch.Tensor, paths: list[Path], root: Path, probs: np.ndarray, decisions: list[int]):
        from medimg.explain.gradcam import compute_cams, denormalise, save_explanation

        names, pre = self.trained.class_names, self.trained.preprocess
        targets = decisions if self.g.target is None else [names.index(str(self.g.target))] * len(x)
        cams = compute_cams(self.trained.model, x, targets, method=self.g.method, layer=self.g.layer)
        figures = []
        for i, path in enumerate(paths):
            rel = path.name if root.is_file() else str(path.relative_to(root))
            title = f"{rel}: {names[decisions[i]]} p={probs[i, decisions[i]]:.3f}"
            title += " (uncalibrated)" if not self.trained.is_calibrated else ""
            title += f"; map for {self.g.target}" if self.g.target is not None else ""
            name = Path(rel.replace("/", "__").replace("\\", "__")).stem + ".png"
            figures.append(save_explanation(self.out_dir / name, denormalise(x[i], pre.mean, pre.std), cams[i], title))
        return figures


def summary(result: PredictResult, out_dir: Path) -> None:
    print(f"predicted {len(result.rows)} image(s); skipped {len(result.skipped)} non-image file(s) and "
          f"{len(result.unreadable)} unreadable image(s)")
    for path, e in list(result.unreadable.items())[:20]:
        print(f"  unreadable: {path}: {e}")
    print(f"predictions: {result.csv_path}")
    if result.figures:
        print(f"Grad-CAM figures: {out_dir / 'gradcam'} ({len(result.figures)})")
    if result.calibration_note.startswith(UNCALIBRATED[:12]):
        log.warning("the probabilities are not calibrated (the checkpoint holds no calibration)")


_TRUE, _FALSE = ("true", "1", "yes", "on"), ("false", "0", "no", "off")


def expand_shorthands(argv: list[str]) -> list[str]:
    """``gradcam=true|false`` -> ``gradcam.enabled=...`` (``gradcam`` itself is a group of options)."""
    out = []
    for a in argv:
        key, sep, value = a.partition("=")
        if sep and key == "gradcam" and value.lower() in _TRUE + _FALSE:
            a = "gradcam.enabled=" + ("true" if value.lower() in _TRUE else "false")
        out.append(a)
    return out


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="predict")
def main(cfg: DictConfig) -> None:
    run_task(predict, OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    sys.argv = expand_shorthands(sys.argv)
    guard_command_line("predict")  # an unknown key: one line, before any work
    main()
