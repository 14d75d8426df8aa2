"""Referral used as trained: the rule travels in best.ckpt and model.onnx, and predict (PyTorch and onnxruntime)
and the server refer the same images, each below the stored threshold; a run whose validation split cannot back
its target keeps what it trained, without a rule, and still reports AURC."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from fastapi.testclient import TestClient

from medimg.config.schema import read
from medimg.config.serve import ServeSettings
from medimg.evaluation.selective import ReferralRule
from medimg.inference import load_trained
from medimg.predict import predict
from medimg.serving.app import create_app
from tests.conftest import command_config
from tests.test_serve import image_bytes, part

pytestmark = pytest.mark.slow
SEEDS = range(40, 48)


@pytest.fixture(scope="module")
def referring(tiny_ckpt, tmp_path_factory):
    """The tiny checkpoint with a referral rule whose threshold splits its images' confidences in two."""
    root = tmp_path_factory.mktemp("referral")
    images = root / "images"
    images.mkdir()
    for i in SEEDS:
        (images / f"img{i}.png").write_bytes(image_bytes(i))
    plain = predict(command_config("predict", root / "plain", f"ckpt_path={tiny_ckpt}", f"input={images}",
                                   f"output_dir={root / 'plain'}"))
    conf = np.unique([r["probability"] for r in plain.rows])
    assert len(conf) >= 2, "the tiny model gives every image the same confidence"
    middle = len(conf) // 2
    rule = ReferralRule(target=0.9, level=0.95, threshold=float(conf[middle - 1] + conf[middle]) / 2,
                        fitted_on="a test")
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt["medimg"]["referral"] = rule.to_dict()
    path = root / "referring.ckpt"
    torch.save(ckpt, path)
    return {"ckpt": path, "rule": rule, "images": images, "root": root}


def test_predict_and_the_onnx_engine_refer_below_the_stored_threshold(referring, capsys):
    from medimg.export import export_onnx

    r, rule = referring, referring["rule"]
    assert load_trained(r["ckpt"]).referral == rule
    out = r["root"] / "torch"
    predict(command_config("predict", out, f"ckpt_path={r['ckpt']}", f"input={r['images']}", f"output_dir={out}"))
    printed = capsys.readouterr().out
    frame = pd.read_csv(out / "predictions.csv")
    assert frame["refer"].dtype == bool and frame["refer"].tolist() == (frame["probability"] < rule.threshold).tolist()
    assert frame["refer"].any() and not frame["refer"].all()
    assert f"referral: {rule.describe()}" in printed
    for path, refer in zip(frame["path"], frame["refer"]):
        line = next(x for x in printed.splitlines() if x.startswith(f"{Path(path).name}: "))
        assert line.endswith("  refer") == refer, line
    onnx = export_onnx(r["ckpt"], r["root"] / "model.onnx", opset=17, check=True, atol=1e-4)
    again = r["root"] / "onnx"
    predict(command_config("predict", again, f"onnx_path={onnx['path']}", "engine=onnx", f"input={r['images']}",
                           f"output_dir={again}"))
    assert pd.read_csv(again / "predictions.csv")["refer"].tolist() == frame["refer"].tolist()


def test_the_server_refers_the_same_images_and_says_why(referring):
    r, rule = referring, referring["rule"]
    settings = read(ServeSettings, command_config("serve", r["root"], f"ckpt_path={r['ckpt']}"), "")
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict", files=[part(f"img{i}.png", image_bytes(i)) for i in SEEDS])
    assert response.status_code == 200, response.text
    plain = pd.read_csv(r["root"] / "plain" / "predictions.csv")
    expected = dict(zip(plain["path"].map(lambda p: Path(p).name), plain["probability"]))
    for one in response.json()["results"]:
        referral, confidence = one["referral"], one["probability"]
        assert referral["refer"] == (expected[one["filename"]] < rule.threshold)
        assert referral["threshold"] == rule.threshold and referral["target"] == 0.9
        assert referral["confidence"] == pytest.approx(confidence) and referral["reason"] == rule.reason(confidence)
        if referral["refer"]:
            assert referral["reason"].startswith("refer: the model is not confident enough (confidence ")


def test_a_run_that_cannot_back_its_target_keeps_its_run_without_a_rule(tiny_ckpt):
    # the default target 0.95 at level 0.95 needs 59 validation images right in a row; the tiny run has ~24
    assert load_trained(tiny_ckpt).referral is None
    run = tiny_ckpt.parent.parent
    metrics = json.loads((run / "metrics.json").read_text())
    assert "test/selective_aurc" in metrics and "test/referred_share" not in metrics
    assert metrics["test/selective_aurc_ci_low"] <= metrics["test/selective_aurc"] <= metrics["test/selective_aurc_ci_high"]
    assert "Referral: none" in (run / "report.md").read_text()
    assert "refer" not in pd.read_csv(run / "predictions.csv").columns
