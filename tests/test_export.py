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

from medimg.errors import ConfigError
from medimg.evaluation.calibration import BCTS, Calibration, Isotonic, Platt, Temperature, VectorScaling
from medimg.export import OPSETS, export, export_onnx, onnx_graph
from medimg.inference import CheckpointError, load_trained
from medimg.predict import predict
from tests.conftest import command_config

ROOT = Path(__file__).resolve().parents[1]


def _with_calibration(src: Path, dst: Path, calibration) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["medimg"]["calibration"] = calibration.to_dict() if isinstance(calibration, Calibration) else calibration
    torch.save(ckpt, dst)
    return dst


@pytest.fixture(scope="module")
def onnx_model(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx")
    ckpt = _with_calibration(tiny_ckpt, out / "t.ckpt", {"method": "temperature", "temperature": 2.5})
    info = export_onnx(ckpt, out / "model.onnx", opset=17, check=True, atol=1e-4)
    return ckpt, Path(info["path"]), info


def test_export_writes_checked_model_with_metadata(onnx_model):
    ckpt, path, info = onnx_model
    assert info["max_abs_diff"] < 1e-4
    model = load_trained(ckpt).model
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["medimg.class_names"]) == model.class_names
    pre = json.loads(meta["medimg.preprocess"])
    assert pre["img_size"] == 32 and len(pre["mean"]) == 3 and len(pre["std"]) == 3
    assert json.loads(meta["medimg.calibration"])["temperature"] == 2.5
    assert "folded" in meta["medimg.calibration_note"]


@pytest.mark.parametrize("batch", [1, 7])
def test_dynamic_batch_and_folded_temperature(onnx_model, batch):
    ckpt, path, _ = onnx_model
    model = load_trained(ckpt).model
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
    iso = Isotonic.fit(logits, targets)
    test = torch.randn(300, 4, generator=g) * 3
    ref = iso.probs(test.double()).float()
    np.testing.assert_allclose(iso.as_module(4)(test).numpy(), ref.numpy(), atol=1e-5)
    platt = Platt(a=0.7, b=-0.3)
    two = test[:, :2]
    np.testing.assert_allclose(platt.as_module(2)(two).numpy(), platt.probs(two).numpy(), atol=1e-6)
    iso2 = Isotonic.fit(two, (targets[:300] % 2))
    np.testing.assert_allclose(iso2.as_module(2)(two).numpy(), iso2.probs(two.double()).float().numpy(), atol=1e-5)
    with pytest.raises(CheckpointError, match="binary"):
        platt.as_module(4)


def test_isotonic_checkpoint_exports(tiny_ckpt, tmp_path):
    g = torch.Generator().manual_seed(1)
    iso = Isotonic.fit(torch.randn(300, 4, generator=g), torch.randint(0, 4, (300,), generator=g))
    ckpt = _with_calibration(tiny_ckpt, tmp_path / "iso.ckpt", iso)
    info = export_onnx(ckpt, tmp_path / "model.onnx", opset=17, check=True, atol=1e-4)
    assert info["max_abs_diff"] < 1e-4


def _shifted_logits(n: int, c: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g) * 2
    y = torch.multinomial(z.softmax(-1), 1, generator=g).squeeze(1)
    return z * 1.7 + torch.linspace(-1.0, 1.0, c), y


@pytest.mark.parametrize("c", [2, 5])
def test_every_calibration_layer_folds_into_onnx(c):
    """Each method's graph through the exporter (opset 17, converted down from 18), on batches it was not
    exported with."""
    z, y = _shifted_logits(500, c, c)
    test = torch.randn(64, c, generator=torch.Generator().manual_seed(9)) * 4
    states = [Temperature(temperature=1.7), BCTS.fit(z, y), VectorScaling.fit(z, y), Isotonic.fit(z, y)]
    for state in states + ([Platt(a=0.7, b=-0.3)] if c == 2 else []):
        layer = state.as_module(c).eval()
        ref = state.probs(test.double()).numpy()
        np.testing.assert_allclose(layer(test).detach().numpy(), ref, atol=1e-5)
        proto = onnx_graph(layer, test[:2], 17, input_name="logits", output_names=("probs",))
        assert [o.version for o in proto.opset_import if o.domain == ""] == [17]
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        for batch in (1, 64):
            got = sess.run(["probs"], {"logits": test[:batch].numpy()})[0]
            np.testing.assert_allclose(got, ref[:batch], atol=1e-5, err_msg=state.method)
    with pytest.raises(CheckpointError, match="3 values of 'bias' but the model has 2 classes"):
        BCTS(temperature=1.0, bias=(0.0, 0.0, 0.0)).as_module(2)


def test_bcts_checkpoint_exports(tiny_ckpt, tmp_path):
    z, y = _shifted_logits(300, 4, 1)
    ckpt = _with_calibration(tiny_ckpt, tmp_path / "bcts.ckpt", BCTS.fit(z, y))
    info = export_onnx(ckpt, tmp_path / "model.onnx", opset=17, check=True, atol=1e-4)
    assert info["max_abs_diff"] < 1e-4 and "bcts" in info["calibration"]


def test_uncalibrated_export_says_so(tiny_ckpt, tmp_path, capsys):
    ckpt = _with_calibration(tiny_ckpt, tmp_path / "plain.ckpt", None)
    export(command_config("export", tmp_path, f"ckpt_path={ckpt}", f"output_dir={tmp_path / 'o'}"))
    out = capsys.readouterr().out
    assert "UNCALIBRATED" in out and "onnxruntime check passed" in out
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "o" / "model.onnx")).metadata_props}
    assert json.loads(meta["medimg.calibration"]) == {"method": "none"}


def test_predict_with_onnx_matches_torch(onnx_model, tmp_path):
    ckpt, path, _ = onnx_model
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(5):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (50, 40, 3), dtype=np.uint8)).save(d / f"{i}.png")
    base = [f"ckpt_path={ckpt}", f"input={d}", "top_k=2", "batch_size=2", "device=cpu", "precision=32", "tta=true"]
    a = predict(command_config("predict", tmp_path / "t", *base, "engine=torch")).rows
    res = predict(command_config("predict", tmp_path / "o", *base, "engine=onnx", f"onnx_path={path}",
                                 "gradcam.enabled=true", "gradcam.method=eigencam", "gradcam.layer=layer3"))
    b = res.rows
    assert len(res.figures) == 5  # maps from the checkpoint's PyTorch model, probabilities from onnxruntime
    assert [r["prediction"] for r in a] == [r["prediction"] for r in b]
    for ra, rb in zip(a, b):
        for k in ra:
            if k.startswith("p_"):
                assert abs(ra[k] - rb[k]) < 1e-4


def test_errors(tiny_ckpt, tmp_path):
    with pytest.raises(ConfigError, match="onnx"):
        export(command_config("export", tmp_path, f"ckpt_path={tiny_ckpt}", "format=tflite"))
    with pytest.raises(CheckpointError, match="does not exist"):
        export(command_config("export", tmp_path, f"ckpt_path={tmp_path / 'none.ckpt'}"))
    with pytest.raises(Exception, match="model.onnx"):
        predict(command_config("predict", tmp_path, f"input={tmp_path}", "engine=onnx",
                               f"onnx_path={tmp_path / 'model.onnx'}"))


@pytest.mark.parametrize("opset", [16, 26])
def test_an_opset_the_exporter_cannot_write_is_refused(tiny_ckpt, tmp_path, opset):
    assert opset not in OPSETS
    with pytest.raises(ConfigError, match=f"opset: {opset} .*set opset= to one of 17..25"):
        export(command_config("export", tmp_path, f"ckpt_path={tiny_ckpt}", f"opset={opset}",
                              f"output_dir={tmp_path}"))
    assert not (tmp_path / "model.onnx").exists()


def test_the_exporters_own_opset_is_written_as_asked(tiny_ckpt, tmp_path):
    info = export_onnx(tiny_ckpt, tmp_path / "model.onnx", opset=18, check=True, atol=1e-4)
    model = onnx.load(str(tmp_path / "model.onnx"))
    assert info["max_abs_diff"] < 1e-4 and [o.version for o in model.opset_import if o.domain == ""] == [18]
    dims = {v.name: v.type.tensor_type.shape.dim[0].dim_param for v in [*model.graph.input, *model.graph.output]}
    assert dims == {"image": "batch", "probs": "batch", "logits": "batch"}
    assert not model.graph.initializer[0].external_data and not list(tmp_path.glob("*.data"))  # weights inline


def test_cli(tiny_ckpt, tmp_path):
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    r = subprocess.run([sys.executable, "-m", "medimg.export", f"ckpt_path={ckpt}", "format=onnx",
                        f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "model.onnx").is_file()  # next to the checkpoint
    assert "onnxruntime check passed" in r.stdout
    assert "(opset 17," in r.stdout and "[torch.onnx]" not in r.stdout  # the exporter's progress lines are quiet
    assert "Warning" not in r.stderr and "Traceback" not in r.stderr, r.stderr[-2000:]


BACKBONES = sorted(p.stem for p in (ROOT / "conf" / "backbone").glob("*.yaml") if p.stem != "timm")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_every_configured_backbone_exports_and_passes_the_parity_check(backbone, tiny_ckpt, tmp_path):
    """The tiny run's checkpoint (its classes, preprocessing and calibration) with another backbone's network."""
    from medimg.models.classifier import ImageClassifier

    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    torch.manual_seed(0)
    model = ImageClassifier(**{**ckpt["hyper_parameters"], "backbone": backbone, "weights": None})
    ckpt.pop("optimizer_states", None)
    ckpt["hyper_parameters"], ckpt["state_dict"] = dict(model.hparams), model.state_dict()
    torch.save(ckpt, tmp_path / "best.ckpt")
    info = export_onnx(tmp_path / "best.ckpt", tmp_path / "model.onnx", opset=17, check=True, atol=1e-4)
    assert info["max_abs_diff"] < 1e-4
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert meta["medimg.backbone"] == backbone and json.loads(meta["medimg.preprocess"])["interpolation"]
