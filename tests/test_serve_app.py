"""The serving app in this process (Starlette's TestClient runs its lifespan, which loads the model): the ONNX
engine, uncalibrated and binary checkpoints, and errors at startup."""

from __future__ import annotations

import pytest
import torch
from fastapi.testclient import TestClient

from medimg.cli import run_task
from medimg.config.schema import read
from medimg.config.serve import ServeSettings
from medimg.errors import ConfigError, UserError
from medimg.inference import UNCALIBRATED
from medimg.serve import serve
from medimg.serving.app import create_app
from medimg.serving.service import ServedModel
from tests.conftest import command_config
from tests.test_serve import check_equal_to_predict, image_bytes, part, predict_rows


def settings(tmp_path, *overrides: str) -> ServeSettings:
    return read(ServeSettings, command_config("serve", tmp_path, *overrides), "")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    images = tmp_path_factory.mktemp("serve_app_images")
    for i in range(3):
        (images / f"img{i}.png").write_bytes(image_bytes(20 + i))
    return images


def copy_ckpt(src, dst, names=None, calibration=None):
    """``src`` with ``calibration``; ``names``: keep only these first classes (rows of the head)."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["medimg"]["calibration"] = calibration
    if names:
        n = len(names)
        ckpt["hyper_parameters"]["class_names"] = ckpt["medimg"]["class_names"] = list(names)
        ckpt["state_dict"] = {k: v[:n] if v.ndim and v.shape[0] == 4 and k.startswith("net.fc") else v
                              for k, v in ckpt["state_dict"].items()}
    torch.save(ckpt, dst)
    return dst


def test_onnx_engine_equals_predict_and_flags_uncalibrated(tiny_ckpt, folder, tmp_path):
    from medimg.export import export_onnx

    ckpt = copy_ckpt(tiny_ckpt, tmp_path / "plain.ckpt")
    export_onnx(ckpt, tmp_path / "model.onnx", opset=17, check=True, atol=1e-4)
    expected = predict_rows(ckpt, folder, tmp_path / "predict", "engine=onnx")
    with TestClient(create_app(settings(tmp_path, f"ckpt_path={ckpt}", "engine=onnx"))) as client:
        meta = client.get("/metadata").json()
        files = [part(name, (folder / name).read_bytes()) for name in expected]
        response = client.post("/predict", files=files)
        explained = client.post("/explain", files=files[:1])
    assert meta["engine"] == "onnx" and meta["calibrated"] is False and meta["calibration_method"] is None
    check_equal_to_predict(response, expected, meta["class_names"])
    assert response.json()["calibrated"] is False and response.json()["calibration_note"].startswith(UNCALIBRATED)
    assert explained.status_code == 200 and explained.headers["content-type"] == "image/png"


def test_onnx_file_alone_serves_without_gradcam(tiny_ckpt, folder, tmp_path):
    from medimg.export import export_onnx

    export_onnx(tiny_ckpt, tmp_path / "alone.onnx", opset=17, check=False, atol=1e-4)
    with TestClient(create_app(settings(tmp_path, "engine=onnx", f"onnx_path={tmp_path / 'alone.onnx'}"))) as client:
        meta = client.get("/metadata").json()
        explained = client.post("/explain", files=[part("a.png", (folder / "img0.png").read_bytes())])
        predicted = client.post("/predict", files=[part("a.png", (folder / "img0.png").read_bytes())])
    assert meta["explain_available"] is False and meta["backbone"] == "resnet18"
    assert meta["calibrated"] is True and "folded into the ONNX graph" in meta["calibration_note"]
    assert meta["test_metrics"]  # found through the source checkpoint named in the ONNX metadata
    assert explained.status_code == 404 and "ckpt_path" in explained.json()["detail"]
    assert predicted.status_code == 200
    other = copy_ckpt(tiny_ckpt, tmp_path / "other.ckpt", names=["benign", "malignant"])
    with pytest.raises(ConfigError, match="different classes|has the classes"):
        ServedModel(settings(tmp_path, "engine=onnx", f"ckpt_path={other}", f"onnx_path={tmp_path / 'alone.onnx'}"))


def binary_p1(ckpt, folder) -> list[float]:
    """P(class 1) of the folder's images (sorted by name), computed in this process."""
    from medimg.data.readers import read_image
    from medimg.inference import load_trained

    trained = load_trained(ckpt)
    x = torch.stack([trained.preprocess.transform()(read_image(p)) for p in sorted(folder.iterdir())])
    with torch.no_grad():
        return trained.probs(trained.model(x))[:, 1].tolist()


def test_binary_decision_at_the_stored_threshold(tiny_ckpt, folder, tmp_path):
    names = ["benign", "malignant"]
    plain = copy_ckpt(tiny_ckpt, tmp_path / "plain.ckpt", names=names)
    low, middle = sorted(binary_p1(plain, folder))[:2]
    threshold = (low + middle) / 2  # one image below it, the others above
    ckpt = copy_ckpt(tiny_ckpt, tmp_path / "binary.ckpt", names=names,
                     calibration={"method": "none", "threshold": threshold})
    with TestClient(create_app(settings(tmp_path, f"ckpt_path={ckpt}", "inference.batching=false"))) as client:
        meta = client.get("/metadata").json()
        files = [part(p.name, p.read_bytes()) for p in sorted(folder.iterdir())]
        results = client.post("/predict", files=files).json()["results"]
    assert meta["threshold"] == pytest.approx(threshold) and meta["decision_rule"].startswith("malignant when P(")
    decided = [r["prediction"] for r in results]
    assert sorted(decided) == ["benign", "malignant", "malignant"]
    for r in results:
        p1 = r["probabilities"]["malignant"]
        assert r["decision"] == {"positive_class": "malignant", "threshold": pytest.approx(threshold),
                                 "positive": p1 >= threshold}
        assert r["prediction"] == ("malignant" if p1 >= threshold else "benign")


def test_bad_checkpoint_is_one_error_line(tmp_path, capsys):
    cfg = command_config("serve", tmp_path, f"ckpt_path={tmp_path / 'missing.ckpt'}")
    with pytest.raises(SystemExit) as stop:
        run_task(serve, cfg)
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "missing.ckpt" in err and "Traceback" not in err


@pytest.mark.parametrize(("overrides", "message"), [
    (["gradcam.method=blur"], "gradcam.method"),
    (["gradcam.layer=layer9"], "layer9"),
    (["engine=onnx"], "model.onnx"),
    (["limits.max_files=0"], "limits.max_files"),
    (["port=70000"], "port"),
])
def test_bad_settings_stop_at_startup(tiny_ckpt, tmp_path, overrides, message):
    with pytest.raises(UserError, match=message):
        ServedModel(settings(tmp_path, f"ckpt_path={tiny_ckpt}", *overrides))


def test_no_checkpoint_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="ckpt_path"):
        settings(tmp_path)


def test_micro_batcher_gives_each_request_its_own_rows(tmp_path):
    """Requests of 1 to 3 images arriving together share forward passes of at most max_batch images."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from medimg.serving.batching import MicroBatcher

    def run(x: torch.Tensor):
        return x.flatten(1)[:, :2].numpy() * 2  # each image's own numbers, doubled

    async def main():
        with ThreadPoolExecutor(1) as pool:
            batcher = MicroBatcher(run, pool, max_batch=4, max_wait_s=0.01)
            await batcher.start()
            xs = [torch.full((1 + i % 3, 3, 2, 2), float(i)) for i in range(12)]
            outs = await asyncio.gather(*(batcher.probs(x) for x in xs))
            await batcher.stop()
        return xs, outs, batcher.batch_sizes

    xs, outs, sizes = asyncio.run(main())
    for i, (x, out) in enumerate(zip(xs, outs)):
        assert out.shape == (len(x), 2) and (out == 2 * i).all()
    assert sum(sizes) == 24 and max(sizes) <= 4 and len(sizes) < 12  # shared passes, none over max_batch
    assert settings(tmp_path, "ckpt_path=x").inference.batching_for("torch") is True
    assert settings(tmp_path, "ckpt_path=x").inference.batching_for("onnx") is False

