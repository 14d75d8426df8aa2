"""Predict with a trained checkpoint: ``python -m medimg.predict ckpt_path=<ckpt> input=<image or folder>``.

Reads top to bottom: load the model (PyTorch from the checkpoint, or onnxruntime from an exported
``model.onnx``); find the images (a folder is searched recursively, non-image files are skipped and
counted); prepare each as the evaluation split was (size and normalisation stored in the checkpoint);
print the top-k classes with calibrated probabilities; write ``predictions.csv``; with ``gradcam=true``
also a PNG per image with the image, the heat map and the overlay side by side.

``gradcam=true`` / ``gradcam=false`` are shorthands for ``gradcam.enabled=...``.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from medimg.checkpoints import CheckpointError, load_classifier
from medimg.console import quiet_third_party
from medimg.data.readers import IMAGE_SUFFIXES, UnreadableImageError, is_image_file, read_image
from medimg.data.transforms import IMAGENET_MEAN, IMAGENET_STD, eval_transform
from medimg.evaluation.calibration import calibrated_probs, describe
from medimg.evaluation.metrics import predict_labels

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("medimg.predict")


class PredictInputError(ValueError):
    """An input path, option or model file that predict cannot use."""


# ---------------------------------------------------------------------------------------------- preprocessing
def preprocessing_of(hparams: dict[str, Any], img_size: int | None = None) -> dict[str, Any]:
    """Size and normalisation the model was evaluated with: stored in the checkpoint (``preprocess``
    hyper-parameter); checkpoints written before it was stored need ``img_size`` (ImageNet normalisation)."""
    pre = hparams.get("preprocess")
    if pre:
        return {"img_size": int(pre["img_size"]), "resize": float(pre.get("resize", 1.0)),
                "mean": [float(v) for v in pre.get("mean") or IMAGENET_MEAN],
                "std": [float(v) for v in pre.get("std") or IMAGENET_STD]}
    if not img_size:
        raise CheckpointError("this checkpoint does not store its preprocessing (written by an older medimg); "
                              "pass img_size=<the dataset.img_size it was trained with>")
    return {"img_size": int(img_size), "resize": 1.0, "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}


def collect_images(path: str | Path) -> tuple[list[Path], list[Path]]:
    """``(images, skipped)``: a file is taken as it is; a folder is searched recursively, in sorted order,
    and files without an image suffix (and hidden files) are skipped."""
    p = Path(path).expanduser()
    if not p.exists():
        raise PredictInputError(f"input={path} does not exist; give an image file or a folder of images")
    if p.is_file():
        return [p], []
    images, skipped = [], []
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        if any(part.startswith(".") for part in f.relative_to(p).parts):
            continue
        (images if is_image_file(f) else skipped).append(f)
    return images, skipped


# ---------------------------------------------------------------------------------------------- engines
class TorchEngine:
    """The checkpoint's network in PyTorch; calibration applied with ``calibrated_probs``."""

    name = "torch"

    def __init__(self, ckpt_path: str, device: str = "cpu", precision: str = "32", img_size: int | None = None):
        self.model, _ = load_classifier(ckpt_path, map_location=device)
        self.device = torch.device(device)
        self.class_names = list(self.model.class_names)
        self.calibration = self.model.calibration
        self.threshold = (self.calibration or {}).get("threshold")
        self.preprocess = preprocessing_of(dict(self.model.hparams), img_size)
        if str(precision) not in ("32", "bf16"):
            raise PredictInputError(f"precision={precision!r}: choose 32 or bf16")
        self.bf16 = str(precision) == "bf16"
        if self.bf16:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.calibration_note = (f"calibrated ({describe(self.calibration)})" if _is_calibrated(self.calibration)
                                 else "UNCALIBRATED: the checkpoint holds no calibration (plain softmax)")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device)
        with torch.inference_mode():
            if self.bf16:
                x = x.contiguous(memory_format=torch.channels_last)
                with torch.autocast(self.device.type, dtype=torch.bfloat16):
                    return self.model(x).float()
            return self.model(x).float()

    def probs(self, x: torch.Tensor) -> np.ndarray:
        return calibrated_probs(self.logits(x), self.calibration).cpu().numpy()


class OnnxEngine:
    """An exported ``model.onnx`` through onnxruntime: its ``probs`` output has the calibration folded in;
    class names and preprocessing come from its metadata."""

    name = "onnx"

    def __init__(self, onnx_path: str | Path, device: str = "cpu", threads: int | None = None):
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise PredictInputError(f"ONNX model {onnx_path} does not exist; write it with "
                                    "`python -m medimg.export ckpt_path=<ckpt> format=onnx` or set onnx_path=")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting between batches
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
            else ["CPUExecutionProvider"]
        providers = [p for p in providers if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        meta = self.session.get_modelmeta().custom_metadata_map
        if "medimg.class_names" not in meta:
            raise PredictInputError(f"{onnx_path} was not exported by medimg (no class names in its metadata)")
        self.class_names = json.loads(meta["medimg.class_names"])
        self.preprocess = json.loads(meta["medimg.preprocess"])
        self.calibration_note = meta.get("medimg.calibration_note", "calibration unknown")
        self.threshold = (json.loads(meta.get("medimg.calibration", "null")) or {}).get("threshold")
        self.input_name = self.session.get_inputs()[0].name

    def probs(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(["probs"], {self.input_name: x.detach().float().cpu().numpy()})[0]


def _is_calibrated(state: dict[str, Any] | None) -> bool:
    return bool(state) and state.get("method", "none") != "none"


def resolve_device(device: str) -> str:
    if device in ("auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise PredictInputError(f"device={device} but no CUDA GPU is available; use device=cpu")
    return str(device)


def tta_probs(engine, x: torch.Tensor, tta: bool) -> np.ndarray:
    """Probabilities, averaged with those of the horizontally flipped images when ``tta``."""
    p = engine.probs(x)
    if tta:
        p = (p + engine.probs(torch.flip(x, dims=[-1]))) / 2
    return p


# ---------------------------------------------------------------------------------------------- the run
@dataclass
class PredictResult:
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)              # non-image files
    unreadable: dict[str, str] = field(default_factory=dict)      # image files that could not be decoded
    figures: list[str] = field(default_factory=list)
    csv_path: str | None = None
    calibration_note: str = ""


def _batches(paths: Sequence[Path], transform, batch_size: int, result: PredictResult, single: bool
             ) -> Iterator[tuple[list[Path], torch.Tensor]]:
    batch: list[tuple[Path, torch.Tensor]] = []
    for p in paths:
        try:
            batch.append((p, transform(read_image(p))))
        except UnreadableImageError as e:
            if single:
                raise PredictInputError(f"{e}. Supported files: {', '.join(sorted(IMAGE_SUFFIXES))} "
                                        "(any bit depth, grayscale, RGB or RGBA)") from e
            result.unreadable[str(p)] = str(e.__cause__ or e)
            log.warning("skipping %s", e)
            continue
        if len(batch) == batch_size:
            yield [b[0] for b in batch], torch.stack([b[1] for b in batch])
            batch = []
    if batch:
        yield [b[0] for b in batch], torch.stack([b[1] for b in batch])


def predict(cfg: dict[str, Any]) -> PredictResult:
    """Run a prediction config (see conf/predict.yaml) and return what it found and wrote."""
    if not cfg.get("input"):
        raise PredictInputError("set input=<an image file or a folder of images>")
    device = resolve_device(cfg.get("device", "auto"))
    engine_name = cfg.get("engine", "torch")
    gc = cfg.get("gradcam") or {}
    want_cam = bool(gc.get("enabled", False))
    ckpt = cfg.get("ckpt_path")
    if engine_name == "torch":
        if not ckpt:
            raise PredictInputError("set ckpt_path=<run>/checkpoints/best.ckpt")
        engine = TorchEngine(ckpt, device, str(cfg.get("precision", "32")), cfg.get("img_size"))
    elif engine_name == "onnx":
        onnx_path = cfg.get("onnx_path") or (Path(ckpt).with_name("model.onnx") if ckpt else None)
        if onnx_path is None:
            raise PredictInputError("engine=onnx needs onnx_path=<model.onnx> (or ckpt_path=, next to which "
                                    "`python -m medimg.export` writes model.onnx)")
        engine = OnnxEngine(onnx_path, device, cfg.get("threads"))
    else:
        raise PredictInputError(f"engine={engine_name!r}: choose torch or onnx")
    cam_model = None
    if want_cam:
        if not ckpt:
            raise PredictInputError("gradcam=true needs ckpt_path= (maps are computed with the PyTorch model)")
        cam_model = engine.model if isinstance(engine, TorchEngine) else load_classifier(ckpt, device)[0]
    class_names = engine.class_names
    target = gc.get("target")
    if target is not None and str(target) not in class_names:
        raise PredictInputError(f"gradcam.target={target!r} is not a class of this model; choose one of "
                                f"{class_names} or null (the predicted class)")

    root = Path(cfg["input"]).expanduser()
    paths, skipped = collect_images(root)
    single = root.is_file()
    if not paths:
        raise PredictInputError(f"no image files in {root} ({len(skipped)} other files skipped); "
                                f"supported suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}")
    out_dir = Path(cfg["output_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    result = PredictResult(skipped=[str(s) for s in skipped], calibration_note=engine.calibration_note)
    pre = engine.preprocess
    transform = eval_transform(pre["img_size"], pre.get("resize", 1.0), pre["mean"], pre["std"])
    k = max(1, min(int(cfg.get("top_k", 3)), len(class_names)))
    print(f"probabilities: {engine.calibration_note}; engine={engine.name}"
          + (", test-time flip averaging" if cfg.get("tta") else ""))
    if engine.threshold is not None and len(class_names) == 2:
        print(f"decision: {class_names[1]} when P({class_names[1]}) >= {engine.threshold:.4g} (operating threshold)")

    for batch_paths, x in _batches(paths, transform, int(cfg.get("batch_size", 32)), result, single):
        probs = tta_probs(engine, x, bool(cfg.get("tta", False)))
        cams = None
        if cam_model is not None:
            from medimg.explain.gradcam import compute_cams

            tgt = predict_labels(torch.from_numpy(probs), engine.threshold).tolist() if target is None \
                else [class_names.index(str(target))] * len(x)
            cams = compute_cams(cam_model, x, list(tgt), method=gc.get("method", "gradcam"), layer=gc.get("layer"))
        decisions = predict_labels(torch.from_numpy(probs), engine.threshold).tolist()
        for i, p in enumerate(batch_paths):
            rel = p.name if single else str(p.relative_to(root))
            order = np.argsort(-probs[i])[:k]
            d = decisions[i]
            row = {"path": str(p), "prediction": class_names[d], "probability": float(probs[i, d])}
            row.update({f"p_{c}": float(probs[i, j]) for j, c in enumerate(class_names)})
            result.rows.append(row)
            decided = f"  -> {class_names[d]}" if engine.threshold is not None and len(class_names) == 2 else ""
            print(f"{rel}: " + " | ".join(f"{class_names[j]} {probs[i, j]:.3f}" for j in order) + decided)
            if cams is not None:
                result.figures.append(str(_save_cam_figure(out_dir, rel, x[i], cams[i], pre, row, target,
                                                           engine.calibration_note)))

    result.csv_path = str(_write_csv(out_dir / "predictions.csv", result.rows, class_names))
    _summary(result, out_dir)
    return result


def _save_cam_figure(out_dir: Path, rel: str, x: torch.Tensor, cam: np.ndarray, pre: dict[str, Any],
                     row: dict[str, Any], target: str | None, note: str) -> Path:
    from medimg.explain.gradcam import denormalise, save_explanation

    title = f"{rel}: {row['prediction']} p={row['probability']:.3f}"
    if note.startswith("UNCALIBRATED"):
        title += " (uncalibrated)"
    if target is not None:
        title += f"; map for {target}"
    name = rel.replace("/", "__").replace("\\", "__")
    return save_explanation(out_dir / "gradcam" / f"{Path(name).stem}.png",
                            denormalise(x, pre["mean"], pre["std"]), cam, title)


def _write_csv(path: Path, rows: list[dict[str, Any]], class_names: Sequence[str]) -> Path:
    fields = ["path", "prediction", "probability"] + [f"p_{c}" for c in class_names]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6f}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def _summary(result: PredictResult, out_dir: Path) -> None:
    print(f"predicted {len(result.rows)} image(s); skipped {len(result.skipped)} non-image file(s) and "
          f"{len(result.unreadable)} unreadable image(s)")
    for p, e in list(result.unreadable.items())[:20]:
        print(f"  unreadable: {p}: {e}")
    print(f"predictions: {result.csv_path}")
    if result.figures:
        print(f"Grad-CAM figures: {out_dir / 'gradcam'} ({len(result.figures)})")


# ---------------------------------------------------------------------------------------------- CLI
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
    quiet_third_party()
    c = OmegaConf.to_container(cfg, resolve=True)
    try:
        predict(c)
    except (PredictInputError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    sys.argv = expand_shorthands(sys.argv)
    main()
