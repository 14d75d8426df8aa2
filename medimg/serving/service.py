"""The served model: the engine predict uses (PyTorch or onnxruntime), Grad-CAM on the checkpoint, and what
``/metadata`` tells about both. Built once per server process; its methods block and run in worker threads."""

from __future__ import annotations

import copy
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from medimg.config.schema import one_of
from medimg.config.serve import ServeSettings
from medimg.data.readers import ImageLimits
from medimg.engines import decide, open_engine
from medimg.errors import ConfigError
from medimg.evaluation.selective import confidences
from medimg.inference import TrainedModel, resolve_device, run_dir_of
from medimg.serving.schemas import (
    ClassProbability,
    Decision,
    ImageResult,
    Limits,
    Metadata,
    PredictionSet,
    Preprocessing,
    Referral,
)
from medimg.serving.uploads import UploadLimits


def headline_metrics(ckpt: str | Path | None) -> dict[str, float]:
    """``test/<metric>`` numbers of the checkpoint's run (its ``metrics.json``), without per-class entries and
    bootstrap bounds; empty when the run folder has none."""
    if not ckpt:
        return {}
    path = run_dir_of(ckpt) / "metrics.json"
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: float(v) for k, v in metrics.items() if k.startswith("test/") and k.count("/") == 1
            and "_ci_" not in k and isinstance(v, int | float) and np.isfinite(v)}


class ServedModel:
    """The model behind every endpoint; ``probs`` and ``explain_png`` block (call them from worker threads)."""

    def __init__(self, s: ServeSettings):
        device = resolve_device(s.device)
        if s.threads:
            torch.set_num_threads(int(s.threads))
        self.settings = s
        self.engine = open_engine(s.engine, s.ckpt_path, s.onnx_path, device, s.precision, s.threads)
        trained = self.engine.trained_model(s.ckpt_path, device)
        self.cam_model = self._cam_model(trained)
        self._cam_lock = threading.Lock()
        self.class_names = list(self.engine.class_names)
        self.preprocess = self.engine.preprocess
        self.transform = self.preprocess.transform()
        self.limits = UploadLimits(s.limits.max_files, s.limits.max_file_bytes,
                                   ImageLimits(s.limits.max_image_pixels, s.limits.max_aspect_ratio, "limits."))
        self.metadata = self._metadata(trained)

    def _cam_model(self, trained: TrainedModel | None) -> torch.nn.Module | None:
        """A private copy for Grad-CAM: its hooks never see the forward passes of predictions running meanwhile."""
        from medimg.explain.gradcam import METHODS, resolve_layer

        if trained is None:
            return None
        if trained.class_names != list(self.engine.class_names):
            raise ConfigError(f"the checkpoint {trained.path} has the classes {trained.class_names} but the ONNX model "
                              f"has {list(self.engine.class_names)}; give the checkpoint the model was exported from")
        one_of(self.settings.gradcam.method, sorted(METHODS), "gradcam.method")
        model = copy.deepcopy(trained.model).float()
        resolve_layer(model, self.settings.gradcam.layer)  # a gradcam.layer the network lacks stops at startup
        return model

    @property
    def threshold(self) -> float | None:
        return self.engine.threshold if len(self.class_names) == 2 else None

    def probs(self, x: torch.Tensor) -> np.ndarray:
        return self.engine.probs(x)

    def results(self, filenames: list[str], probs: np.ndarray, top_k: int) -> list[ImageResult]:
        names, k = self.class_names, max(1, min(top_k, len(self.class_names)))
        out = []
        sets, decisions = self.prediction_sets(probs), decide(probs, self.threshold)
        referrals = self.referrals(probs, decisions)
        for i, (name, p, d) in enumerate(zip(filenames, probs, decisions)):
            order = np.argsort(-p)[:k]
            decision = None if self.threshold is None else Decision(
                positive_class=names[1], threshold=self.threshold, positive=bool(d == 1))
            out.append(ImageResult(
                filename=name, prediction=names[d], probability=float(p[d]),
                probabilities={c: float(p[j]) for j, c in enumerate(names)},
                top_k=[ClassProbability(class_name=names[j], probability=float(p[j])) for j in order],
                decision=decision, prediction_set=sets[i] if sets else None,
                referral=referrals[i] if referrals else None))
        return out

    def referrals(self, probs: np.ndarray, decisions: list[int]) -> list[Referral]:
        """Each image's referral (none without a stored rule)."""
        rule = self.engine.referral
        if rule is None:
            return []
        conf = confidences(probs, decisions)
        return [Referral(refer=bool(r), confidence=float(c), threshold=rule.threshold, target=rule.target,
                         reason=rule.reason(float(c))) for c, r in zip(conf, rule.refer(conf))]

    def prediction_sets(self, probs: np.ndarray) -> list[PredictionSet]:
        """Each image's conformal prediction set (none without a stored rule)."""
        rule = self.engine.conformal
        if rule is None:
            return []
        coverage = 1 - rule.alpha
        return [PredictionSet(classes=s, coverage=coverage, text=f"at {coverage:.0%} coverage: {', '.join(s)}")
                for s in rule.named_sets(torch.from_numpy(np.asarray(probs)), self.class_names)]

    def explain_png(self, x: torch.Tensor, target: str | None) -> tuple[bytes, str, float]:
        """The Grad-CAM overlay of the one image in ``x`` for ``target`` (None: the decided class) as PNG bytes,
        with the class explained and its probability."""
        from medimg.explain.gradcam import compute_cams, denormalise, overlay

        probs = self.probs(x)
        index = self.class_names.index(target) if target is not None else decide(probs, self.threshold)[0]
        with self._cam_lock:
            cams = compute_cams(self.cam_model, x, [index], method=self.settings.gradcam.method,
                                layer=self.settings.gradcam.layer)
        picture = overlay(denormalise(x[0], self.preprocess.mean, self.preprocess.std), cams[0])
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, format="PNG")
        return buffer.getvalue(), self.class_names[index], float(probs[0, index])

    def _metadata(self, trained: TrainedModel | None) -> Metadata:
        s, engine = self.settings, self.engine
        calibration = engine.calibration
        source = self.source_checkpoint
        threshold = self.threshold
        rule = (f"{self.class_names[1]} when P({self.class_names[1]}) >= {threshold:.4g} (the stored operating "
                "threshold), else " + self.class_names[0]) if threshold is not None else "the most probable class"
        pre = self.preprocess
        return Metadata(
            class_names=self.class_names, backbone=trained.backbone if trained else self._onnx_meta("medimg.backbone"),
            engine=engine.name, calibrated=calibration.is_calibrated, calibration_note=engine.calibration_note,
            calibration_method=calibration.method if calibration.is_calibrated else None, threshold=threshold, decision_rule=rule,
            preprocessing=Preprocessing(img_size=pre.img_size, resize=pre.resize, mean=list(pre.mean),
                                        std=list(pre.std)),
            test_metrics=headline_metrics(source), explain_available=self.cam_model is not None,
            gradcam_method=s.gradcam.method,
            limits=Limits(max_files=s.limits.max_files, max_file_bytes=s.limits.max_file_bytes,
                                max_image_pixels=s.limits.max_image_pixels,
                                max_aspect_ratio=s.limits.max_aspect_ratio))

    @property
    def source_checkpoint(self) -> str | None:
        """The checkpoint the model comes from: ``ckpt_path``, or the one an ONNX model was exported from."""
        return self.settings.ckpt_path or self._onnx_meta("medimg.source_checkpoint")

    def _onnx_meta(self, key: str) -> Any:
        session = getattr(self.engine, "session", None)
        return session.get_modelmeta().custom_metadata_map.get(key) if session is not None else None
