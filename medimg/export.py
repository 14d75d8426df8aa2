"""Export a trained checkpoint: ``python -m medimg.export ckpt_path=<ckpt> format=onnx``.

Writes ``model.onnx`` (next to the checkpoint unless ``output_dir`` is set) with

- input ``image``: float32 ``(batch, 3, img_size, img_size)``, RGB scaled to [0, 1] then normalised with
  the stored mean/std (all in the metadata); the batch dimension is dynamic;
- outputs ``probs`` (the checkpoint's calibration folded in: temperature, BCTS, vector, Platt and isotonic are
  all expressed as graph operations) and ``logits`` (raw, uncalibrated);
- ``metadata_props`` (``medimg.onnx_model.metadata``): class names, preprocessing, calibration and its note,
  the backbone and the source checkpoint.

The graph comes from torch's ONNX exporter (``torch.onnx.export(..., dynamo=True)``, which captures the model
with ``torch.export`` and translates it with onnxscript's torchlib). That exporter writes opset 18 and converts
it up to 25; ``opset=17`` is converted down after the export with onnx's version converter. The graph is
written, weights inline, to a temporary name beside ``model.onnx``, run in onnxruntime on random inputs of two
batch sizes and compared with PyTorch's calibrated probabilities; only when that check passes does it replace
``model.onnx``. A rejected export leaves the previous file as it was.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from medimg.cli import CONF_DIR, run_task
from medimg.config.commands import ExportSettings
from medimg.config.overrides import guard_command_line
from medimg.config.schema import read
from medimg.errors import ConfigError, UserError
from medimg.evaluation.calibration import Calibration
from medimg.files import atomic_write
from medimg.inference import TrainedModel, load_trained
from medimg.onnx_model import metadata

log = logging.getLogger("medimg.export")

# The exporter translates to opset 18 (torchlib's) and converts upwards with onnxscript's version converter, which
# goes to 25; below 18 torch's own fallback leaves the graph at 18 when onnx's converter fails, so 17 (the
# first with LayerNormalization, which the ViT and ConvNeXt graphs use) is converted here after the export.
TORCHLIB_OPSET = 18
OPSETS = range(17, 26)
# Reductions that take ``axes`` as an attribute below opset 18 and have no ``noop_with_empty_axes`` there;
# onnx's 18 -> 17 adapter moves the axes but keeps that attribute, which the checker then rejects.
_AXES_ATTRIBUTE_REDUCTIONS = frozenset({"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax",
                                        "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSumSquare"})
# Loggers of the exporter's steps; a normal export logs nothing a user needs, a failed one raises ExportError.
_EXPORTER_LOGGERS = ("torch.onnx", "torch.export", "torch._export", "torch._dynamo", "torch.fx", "onnxscript",
                     "onnx_ir")


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


def check_opset(opset: int) -> None:
    """Raise a ConfigError naming the ``opset`` setting unless the exporter can write it."""
    if opset not in OPSETS:
        raise ConfigError(f"opset: {opset!r} is not an opset torch's ONNX exporter writes; set opset= to one of "
                          f"{OPSETS[0]}..{OPSETS[-1]} (17, the default, is converted down from the exporter's own 18)")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporter's progress lines, warnings and informational logging for the block."""
    loggers = [logging.getLogger(name) for name in _EXPORTER_LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _down_convert(proto: Any, opset: int) -> Any:
    """The opset-18 graph at ``opset`` (< 18), through onnx's version converter."""
    import onnx.version_converter

    converted = onnx.version_converter.convert_version(proto, opset)
    for node in converted.graph.node:
        if node.op_type not in _AXES_ATTRIBUTE_REDUCTIONS:
            continue
        for attr in [a for a in node.attribute if a.name == "noop_with_empty_axes"]:
            if attr.i:
                raise ExportError(f"{node.op_type} with noop_with_empty_axes=1 has no opset-{opset} form; "
                                  f"set opset={TORCHLIB_OPSET}")
            node.attribute.remove(attr)
    return converted


def onnx_graph(module: nn.Module, example: torch.Tensor, opset: int, input_name: str = "image",
               output_names: tuple[str, ...] = ("probs", "logits")) -> Any:
    """``module`` (in eval mode) as an ONNX ModelProto at ``opset``, its one input's first axis (``batch``)
    dynamic; ``example`` is a batch of 2, so that no size of the batch is baked in."""
    with _quiet_exporter():
        program = torch.onnx.export(
            module, (example,), dynamo=True, opset_version=max(opset, TORCHLIB_OPSET),
            input_names=[input_name], output_names=list(output_names),
            dynamic_shapes=({0: torch.export.Dim("batch")},), verbose=False,
        )
        proto = program.model_proto if opset >= TORCHLIB_OPSET else _down_convert(program.model_proto, opset)
    written = {o.domain: o.version for o in proto.opset_import}.get("")
    if written != opset:
        raise ExportError(f"the exporter wrote opset {written}, not the requested opset={opset}")
    return proto


def _write_graph(trained: TrainedModel, path: Path, opset: int) -> None:
    import onnx

    wrapper = ExportModel(trained.model.net, trained.calibration, len(trained.class_names)).eval()
    size = trained.preprocess.img_size
    try:
        proto = onnx_graph(wrapper, torch.zeros(2, 3, size, size), opset)
    except ExportError:
        raise
    except Exception as e:
        raise ExportError(f"ONNX export of {trained.path} failed: {e}") from e
    del proto.metadata_props[:]
    for k, v in metadata(trained).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_onnx(ckpt_path: str | Path, out_path: str | Path, opset: int, check: bool, atol: float,
                seed: int = 0) -> dict[str, Any]:
    """Write the ONNX model and (``check``) verify it against PyTorch before it replaces ``out_path``."""
    check_opset(opset)
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
    guard_command_line("export")  # an unknown key: one line, before any work
    main()
