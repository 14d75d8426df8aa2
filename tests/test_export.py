"""medimg.export: ONNX with dynamic batch, calibration folded in, metadata; checked with onnxruntime."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from PIL import Image

from medimg.checkpoints import CheckpointError, load_classifier
from medimg.evaluation.calibration import calibrated_probs, fit_isotonic
from medimg.export import CalibrationLayer, ExportError, export, export_onnx
from medimg.predict import predict

ROOT = Path(__file__).resolve().parents[1]


def _with_calibration(src: Path, dst: Path, calibration) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["medimg"]["calibration"] = calibration
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def onnx_model(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    ckpt = _with_calibration(tiny_ckpt, out / "t.ckpt", {"method": "temperature", "temperature": 2.5})
    info = export_onnx(ckpt, out / "model.onnx")
    return ckpt, Path(info["path"]), info


def test_export_writes_checked_model_with_metadata(onnx_model):
    ckpt, path, info = onnx_model
    assert info["max_abs_diff"] < 1e-4
    model, _ = load_classifier(ckpt)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["medimg.class_names"]) == model.class_names
    pre = json.loads(meta["medimg.preprocess"])
    assert pre["img_size"] == 32 and len(pre["mean"]) == 3 and len(pre["std"]) == 3
    assert json.loads(meta["medimg.calibration"])["temperature"] == 2.5
    assert "folded" in meta["medimg.calibration_note"]


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_and_folded_temperature(onnx_model, batch):
    ckpt, path, _ = onnx_model
    model, _ = load_classifier(ckpt)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(batch))
    probs, logits = sess.run(["probs", "logits"], {"image": x.numpy()})
    with torch.no_grad():
        ref_logits = model(x)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-4)
    np.testing.assert_allclose(probs, torch.softmax(ref_logits / 2.5, -1).numpy(), atol=1e-5)


def test_isotonic_and_platt_fold_exactly():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(400, 4, generator=g) * 2
    targets = torch.randint(0, 4, (400,), generator=g)
    iso = fit_isotonic(logits, targets)
    test = torch.randn(300, 4, generator=g) * 3
    ref = calibrated_probs(test.double(), iso).float()
    np.testing.assert_allclose(CalibrationLayer(iso, 4)(test).numpy(), ref.numpy(), atol=1e-5)
    platt = {"method": "platt", "a": 0.7, "b": -0.3}
    two = test[:, :2]
    np.testing.assert_allclose(CalibrationLayer(platt, 2)(two).numpy(), calibrated_probs(two, platt).numpy(),
                               atol=1e-6)
    iso2 = fit_isotonic(two, (targets[:300] % 2))
    np.testing.assert_allclose(CalibrationLayer(iso2, 2)(two).numpy(),
                               calibrated_probs(two.double(), iso2).float().numpy(), atol=1e-5)
    with pytest.raises(ExportError, match="binary"):
        CalibrationLayer(platt, 4)


def test_isotonic_checkpoint_exports(tiny_ckpt, tmp_path):
    g = torch.Generator().manual_seed(1)
    iso = fit_isotonic(torch.randn(300, 4, generator=g), torch.randint(0, 4, (300,), generator=g))
    ckpt = _with_calibration(tiny_ckpt, tmp_path / "iso.ckpt", iso)
    info = export_onnx(ckpt, tmp_path / "model.onnx")
    assert info["max_abs_diff"] < 1e-4


def test_uncalibrated_export_says_so(tiny_ckpt, tmp_path, capsys):
    ckpt = _with_calibration(tiny_ckpt, tmp_path / "plain.ckpt", None)
    export({"ckpt_path": str(ckpt), "format": "onnx", "output_dir": str(tmp_path / "o")})
    out = capsys.readouterr().out
    assert "UNCALIBRATED" in out and "onnxruntime check passed" in out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "o" / "model.onnx")).metadata_props}
    assert meta["medimg.calibration"] == "null"


def test_predict_with_onnx_matches_torch(onnx_model, tmp_path):
    ckpt, path, _ = onnx_model
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    base = {"ckpt_path": str(ckpt), "input": str(d), "top_k": 2, "batch_size": 2, "device": "cpu",
            "precision": "32", "tta": True, "img_size": None, "gradcam": {"enabled": False}}
    a = predict({**base, "engine": "torch", "output_dir": str(tmp_path / "t")}).rows
    res = predict({**base, "engine": "onnx", "onnx_path": str(path), "output_dir": str(tmp_path / "o"),
                   "gradcam": {"enabled": True, "method": "eigencam", "layer": "layer3"}})
    b = res.rows
    assert len(res.figures) == 5  # maps from the checkpoint's PyTorch model, probabilities from onnxruntime
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            if k.startswith("p_"):
                assert abs(ra[k] - rb[k]) < 1e-4


def test_errors(tiny_ckpt, tmp_path):
    with pytest.raises(ExportError, match="only onnx"):
        export({"ckpt_path": str(tiny_ckpt), "format": "tflite"})
    with pytest.raises(CheckpointError, match="does not exist"):
        export({"ckpt_path": str(tmp_path / "none.ckpt"), "format": "onnx"})
    with pytest.raises(Exception, match="model.onnx"):
        predict({"ckpt_path": None, "input": str(tmp_path), "engine": "onnx", "onnx_path": str(tmp_path / "model.onnx"),
                 "output_dir": str(tmp_path)})


def test_cli(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    r = subprocess.run([sys.executable, "-m", "medimg.export", f"ckpt_path={ckpt}", "format=onnx",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "model.onnx").is_file()  # next to the checkpoint
    assert "onnxruntime check passed" in r.stdout
