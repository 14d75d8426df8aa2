"""The exported ONNX model's contract: what ``medimg.export`` writes into ``model.onnx`` and how it is run.

Input ``image``: float32 ``(batch, 3, img_size, img_size)`` prepared as the checkpoint's ``preprocess`` says.
Outputs ``probs`` (the checkpoint's calibration folded into the graph) and ``logits`` (raw). The file's
``metadata_props`` (``medimg.*``) carry the class names, the preprocessing, the calibration and its note, so
the file alone is enough to predict: ``OnnxEngine`` reads them back.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from medimg.data.transforms import Preprocess
from medimg.errors import CheckpointError, UserError
from medimg.evaluation.calibration import Calibration
from medimg.evaluation.conformal import Conformal
from medimg.evaluation.selective import ReferralRule
from medimg.inference import TrainedModel, load_trained

INPUT_NOTE = ("image: float32 (batch, 3, H, W), RGB scaled to [0, 1], resized (shorter side to img_size*resize), "
              "center-cropped to img_size, normalised (x - mean) / std")


def metadata(trained: TrainedModel) -> dict[str, str]:
    """The ``metadata_props`` of an exported model."""
    return {
        "medimg.class_names": json.dumps(trained.class_names),
        "medimg.preprocess": json.dumps(trained.preprocess.to_dict()),
        "medimg.input": INPUT_NOTE,
        "medimg.calibration": json.dumps(trained.calibration.to_dict()),
        "medimg.conformal": json.dumps(trained.conformal.to_dict(scores=False) if trained.conformal is not None else None),
        "medimg.referral": json.dumps(trained.referral.to_dict() if trained.referral is not None else None),
        "medimg.calibration_note": trained.calibration_note
        + (", folded into the ONNX graph" if trained.is_calibrated else ""),
        "medimg.backbone": trained.backbone,
        "medimg.source_checkpoint": str(Path(trained.path).resolve()),
    }


def first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:300] if text else type(e).__name__


class OnnxEngine:
    """An exported ``model.onnx`` through onnxruntime: its ``probs`` output has the calibration folded in;
    class names and preprocessing come from its metadata."""

    name = "onnx"

    def __init__(self, onnx_path: str | Path, device: str, threads: int | None):
        import onnxruntime as ort

        onnx_path = Path(onnx_path)
        if not onnx_path.is_file():
            raise UserError(f"ONNX model {onnx_path} does not exist; write it with "
                            "`python -m medimg.export ckpt_path=<ckpt> format=onnx` or set onnx_path=")
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # no busy-waiting between batches
        wanted = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") \
            else ["CPUExecutionProvider"]
        providers = [p for p in wanted if p in ort.get_available_providers()]
        try:  # onnxruntime's own errors (InvalidProtobuf, external data outside the model's folder ...)
            self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)
        except Exception as e:
            raise UserError(f"{onnx_path} is not an ONNX model onnxruntime can load ({first_line(e)}); export it "
                            "again with `python -m medimg.export ckpt_path=<ckpt> format=onnx`") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if "medimg.class_names" not in meta:
            raise UserError(f"{onnx_path} was not exported by medimg (no class names in its metadata)")
        try:
            self.class_names: list[str] = [str(c) for c in json.loads(meta["medimg.class_names"])]
            self.preprocess = Preprocess.from_dict(json.loads(meta["medimg.preprocess"]))
            self.calibration = Calibration.from_dict(json.loads(meta.get("medimg.calibration", "null")))
            conformal = json.loads(meta.get("medimg.conformal", "null"))
            self.conformal = Conformal.from_dict(conformal) if conformal else None
            referral = json.loads(meta.get("medimg.referral", "null"))
            self.referral = ReferralRule.from_dict(referral) if referral else None
        except (KeyError, TypeError, json.JSONDecodeError, CheckpointError) as e:
            raise UserError(f"{onnx_path}: its medimg metadata is damaged ({first_line(e)}); export it again") from None
        self.calibration_note = meta.get("medimg.calibration_note", "calibration unknown")
        self.threshold = self.calibration.threshold
        self.input_name = self.session.get_inputs()[0].name

    def trained_model(self, ckpt_path: str | Path | None, device: str) -> TrainedModel | None:
        """The PyTorch model for Grad-CAM: the checkpoint the model was exported from, when given."""
        return load_trained(ckpt_path, device) if ckpt_path else None

    def probs(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(["probs"], {self.input_name: x.detach().float().cpu().numpy()})[0]
