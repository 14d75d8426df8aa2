"""Export a trained checkpoint: ``python -m medimg.export ckpt_path=<ckpt> format=onnx``.

Writes ``model.onnx`` (next to the checkpoint unless ``output_dir`` is set) with

- input ``image``: float32 ``(batch, 3, img_size, img_size)``, RGB scaled to [0, 1] then normalised with
  the stored mean/std (all in the metadata); the batch dimension is dynamic;
- outputs ``probs`` (the checkpoint's calibration folded in: temperature, BCTS, vector, Platt and isotonic are
  all expressed as graph operations) and ``logits`` (raw, uncalibrated);
- ``metadata_props`` (``medimg.onnx_model.metadata``): class names, preprocessing, calibration and its note,
  the backbone and the source checkpoint.

The graph is written to a temporary name beside ``model.onnx``, run in onnxruntime on random inputs of two
batch sizes and compared with PyTorch's calibrated probabilities; only when that check passes does it replace
``model.onnx``. A rejected export leaves the previous file as it was.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medimg.cli import CONF_DIR, run_task
from medimg.config.commands import ExportSettings
from medimg.config.schema import read
from medimg.errors import UserError
from medimg.evaluation.calibration import Calibration
from medimg.files import atomic_write
from medimg.inference import TrainedModel, load_trained
from medimg.onnx_model import metadata

log = logging.getLogger("medimg.export")


class ExportError(UserError, RuntimeError):
    """The exported model cannot be written or does not reproduce PyTorch."""


class ExportModel(nn.Module):
    """Network + calibration: ``image -> (probs, logits)``."""

    def __init__(self, net: nn.Module, calibration: Calibration, num_classes: int):
        super().__init__()
        self.net = net
        self.calibrate = calibration.as_module(num_classes)

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(image)
        return self.calibrate(logits), logits


def _write_graph(trained: TrainedModel, path: Path, opset: int) -> None:
    import onnx

    wrapper = ExportModel(trained.model.net, trained.calibration, len(trained.class_names)).eval()
    size = trained.preprocess.img_size
    try:
        torch.onnx.export(
            wrapper, (torch.zeros(2, 3, size, size),), str(path), dynamo=False, opset_version=opset,
            input_names=["image"], output_names=["probs", "logits"],
            dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}, "logits": {0: "batch"}},
        )
    except Exception as e:
        raise ExportError(f"ONNX export of {trained.path} failed: {e}") from e
    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in metadata(trained).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(ckpt_path: str | Path, out_path: str | Path, opset: int, check: bool, atol: float,
                seed: int = 0) -> dict[str, Any]:
    """Write the ONNX model and (``check``) verify it against PyTorch before it replaces ``out_path``."""
    trained = load_trained(ckpt_path)
    trained.model.float().eval()
    info: dict[str, Any] = {"path": str(out_path), "opset": opset,
                            "calibration": f"{trained.calibration_note}, folded into the ONNX graph"
                            if trained.is_calibrated else trained.calibration_note}
    with atomic_write(out_path) as tmp:
        _write_graph(trained, tmp, opset)
        if check:
            info["max_abs_diff"] = check_onnx(tmp, trained, atol=atol, seed=seed)
    return info


def check_onnx(onnx_path: str | Path, trained: TrainedModel, atol: float, seed: int = 0,
               batch_sizes: tuple[int, ...] = (1, 5)) -> float:
    """Max |probs_onnxruntime - calibrated probs of PyTorch| over random inputs of each batch size; raises
    ExportError above ``atol``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    g = torch.Generator().manual_seed(seed)
    size, worst = trained.preprocess.img_size, 0.0
    for b in batch_sizes:
        x = torch.randn(b, 3, size, size, generator=g)
        with torch.no_grad():
            ref = trained.probs(trained.model.net(x).double()).numpy()
        got = sess.run(["probs"], {"image": x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"onnxruntime gave probs of shape {got.shape} for a batch of {b}, PyTorch {ref.shape}")
        worst = max(worst, float(np.abs(got - ref).max()))
    if not worst < atol:
        raise ExportError(f"the exported graph does not reproduce PyTorch: max |difference of probabilities| = "
                          f"{worst:.3g} >= atol={atol:g}; the previous model.onnx (if any) is unchanged")
    return worst


def export(cfg: dict[str, Any]) -> dict[str, Any]:
    x = read(ExportSettings, cfg, "")
    out_dir = Path(x.output_dir) if x.output_dir else Path(x.ckpt_path).resolve().parent
    info = export_onnx(x.ckpt_path, out_dir / "model.onnx", opset=x.opset, check=x.check, atol=x.atol)
    print(f"wrote {info['path']} (opset {info['opset']}, dynamic batch); probabilities: {info['calibration']}")
    if "max_abs_diff" in info:
        print(f"onnxruntime check passed: max |difference of probabilities| vs PyTorch = "
              f"{info['max_abs_diff']:.2e} (< {x.atol:g}) on batches of 1 and 5")
    return info


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="export")
def main(cfg: DictConfig) -> None:
    run_task(export, OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    main()
