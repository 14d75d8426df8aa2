"""Export a trained checkpoint: ``python -m medimg.export ckpt_path=<ckpt> format=onnx``.

Writes ``model.onnx`` (next to the checkpoint unless ``output_dir`` is set) with

- input ``image``: float32 ``(batch, 3, img_size, img_size)``, RGB scaled to [0, 1] then normalised with
  the stored mean/std (all in the metadata); the batch dimension is dynamic;
- outputs ``probs`` (the checkpoint's calibration folded in: temperature, Platt and isotonic are all
  expressed as graph operations) and ``logits`` (raw, uncalibrated);
- ``metadata_props``: ``medimg.class_names``, ``medimg.preprocess``, ``medimg.calibration`` (JSON),
  ``medimg.calibration_note`` and the source checkpoint.

It then runs the file in onnxruntime on random inputs of two batch sizes and compares ``probs`` with
PyTorch's ``calibrated_probs``: a difference above ``atol`` is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medimg.checkpoints import CheckpointError, load_classifier
from medimg.console import quiet_third_party
from medimg.evaluation.calibration import calibrated_probs, describe
from medimg.predict import preprocessing_of

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("medimg.export")


class ExportError(RuntimeError):
    """The exported model cannot be written or does not reproduce PyTorch."""


class CalibrationLayer(nn.Module):
    """``calibrated_probs`` as plain tensor operations that export to ONNX (no searchsorted, no Python
    branching on data). Isotonic maps become sums of clamped linear ramps."""

    def __init__(self, state: dict[str, Any] | None, num_classes: int):
        super().__init__()
        self.method = (state or {}).get("method", "none")
        self.num_classes = num_classes
        if self.method == "temperature":
            self.register_buffer("temperature", torch.tensor(float(state["temperature"])))
        elif self.method == "platt":
            if num_classes != 2:
                raise ExportError(f"platt calibration needs a binary model, this one has {num_classes} classes")
            self.register_buffer("ab", torch.tensor([float(state["a"]), float(state["b"])]))
        elif self.method == "isotonic":
            self.classes = [int(c) for c in state["classes"]]
            self.steps = [len(xs) - 1 for xs in state["x_thresholds"]]
            for i, (xs, ys) in enumerate(zip(state["x_thresholds"], state["y_thresholds"])):
                x = torch.tensor(xs, dtype=torch.float32)
                y = torch.tensor(ys, dtype=torch.float32)
                self.register_buffer(f"x0_{i}", x[:-1])
                self.register_buffer(f"w_{i}", (x[1:] - x[:-1]).clamp_min(1e-12))
                self.register_buffer(f"dy_{i}", y[1:] - y[:-1])
                self.register_buffer(f"y0_{i}", y[:1])
        elif self.method != "none":
            raise ExportError(f"unknown calibration method {self.method!r} in the checkpoint")

    def _isotonic_column(self, p: torch.Tensor, i: int) -> torch.Tensor:
        x0, w, dy, y0 = (getattr(self, f"{n}_{i}") for n in ("x0", "w", "dy", "y0"))
        if self.steps[i] == 0:  # a single step point: a constant
            return y0.expand_as(p)
        ramps = ((p[:, None] - x0[None, :]) / w[None, :]).clamp(0, 1)
        return y0 + (ramps * dy[None, :]).sum(1)

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        if self.method == "temperature":
            return torch.softmax(logits / self.temperature, dim=-1)
        if self.method == "platt":
            p1 = torch.sigmoid(self.ab[0] * (logits[:, 1] - logits[:, 0]) + self.ab[1])
            return torch.stack([1 - p1, p1], dim=1)
        probs = torch.softmax(logits, dim=-1)
        if self.method == "none":
            return probs
        cols = [probs[:, c] for c in range(self.num_classes)]
        for i, c in enumerate(self.classes):
            cols[c] = self._isotonic_column(probs[:, c], i)
        if self.num_classes == 2 and self.classes == [1]:
            return torch.stack([1 - cols[1], cols[1]], dim=1)
        out = torch.stack(cols, dim=1)
        total = out.sum(1, keepdim=True)
        return torch.where(total > 0, out / total.clamp_min(1e-30), probs)


class ExportModel(nn.Module):
    """Network + calibration: ``image -> (probs, logits)``."""

    def __init__(self, net: nn.Module, calibration: dict[str, Any] | None, num_classes: int):
        super().__init__()
        self.net = net
        self.calibrate = CalibrationLayer(calibration, num_classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        return self.calibrate(logits), logits


def calibration_note(state: dict[str, Any] | None) -> str:
    if not state or state.get("method", "none") == "none":
        return "UNCALIBRATED: the checkpoint holds no calibration (plain softmax)"
    return f"calibrated ({describe(state)}), folded into the ONNX graph"


def export_onnx(ckpt_path: str | Path, out_path: str | Path, opset: int = 17, check: bool = True,
                atol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Write the ONNX model and (``check``) verify it against PyTorch; returns what was written and measured."""
    import onnx

    model, state = load_classifier(ckpt_path)
    model = model.float().eval()
    pre = preprocessing_of(dict(model.hparams))
    calib = model.calibration
    wrapper = ExportModel(model.net, calib, model.num_classes).eval()
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(2, 3, pre["img_size"], pre["img_size"])
    try:
        torch.onnx.export(
            wrapper, (dummy,), str(out_path), dynamo=False, opset_version=opset, input_names=["image"],
            output_names=["probs", "logits"],
            dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}, "logits": {0: "batch"}},
        )
    except Exception as e:
        raise ExportError(f"ONNX export of {ckpt_path} failed: {e}") from e
    proto = onnx.load(str(out_path))
    meta = {
        "medimg.class_names": json.dumps(list(model.class_names)),
        "medimg.preprocess": json.dumps(pre),
        "medimg.input": "image: float32 (batch, 3, H, W), RGB scaled to [0, 1], resized (shorter side to "
                        "img_size*resize), center-cropped to img_size, normalised (x - mean) / std",
        "medimg.calibration": json.dumps(calib),
        "medimg.calibration_note": calibration_note(calib),
        "medimg.backbone": str(model.hparams.backbone),
        "medimg.source_checkpoint": str(Path(ckpt_path).resolve()),
    }
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
    info: dict[str, Any] = {"path": str(out_path), "opset": opset, "calibration": calibration_note(calib)}
    if check:
        info["max_abs_diff"] = check_onnx(out_path, model, pre["img_size"], atol=atol, seed=seed)
    return info


def check_onnx(onnx_path: str | Path, model, img_size: int, atol: float = 1e-4, seed: int = 0,
               batch_sizes: tuple[int, ...] = (1, 5)) -> float:
    """Max |probs_onnxruntime - calibrated_probs_pytorch| over random inputs of each batch size; raises
    ExportError above ``atol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batch_sizes:
        x = torch.randn(b, 3, img_size, img_size, generator=g)
        with torch.no_grad():
            ref = calibrated_probs(model.net(x).double(), model.calibration).numpy()
        got = sess.run(["probs"], {"image": x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"{onnx_path}: onnxruntime gave probs of shape {got.shape} for a batch of {b}, "
                              f"PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    if not worst < atol:
        raise ExportError(f"{onnx_path} does not reproduce PyTorch: max |difference of probabilities| = "
                          f"{worst:.3g} >= {atol:g}")
    return worst


def export(cfg: dict[str, Any]) -> dict[str, Any]:
    fmt = cfg.get("format", "onnx")
    if fmt != "onnx":
        raise ExportError(f"format={fmt!r}: only onnx is supported")
    ckpt = cfg.get("ckpt_path")
    if not ckpt:
        raise ExportError("set ckpt_path=<run>/checkpoints/best.ckpt")
    out_dir = Path(cfg["output_dir"]) if cfg.get("output_dir") else Path(ckpt).resolve().parent
    info = export_onnx(ckpt, out_dir / "model.onnx", opset=int(cfg.get("opset", 17)),
                       check=bool(cfg.get("check", True)), atol=float(cfg.get("atol", 1e-4)))
    print(f"wrote {info['path']} (opset {info['opset']}, dynamic batch); probabilities: {info['calibration']}")
    if "max_abs_diff" in info:
        print(f"onnxruntime check passed: max |difference of probabilities| vs PyTorch = "
              f"{info['max_abs_diff']:.2e} (< {cfg.get('atol', 1e-4):g}) on batches of 1 and 5")
    return info


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    try:
        export(OmegaConf.to_container(cfg, resolve=True))
    except (ExportError, CheckpointError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
