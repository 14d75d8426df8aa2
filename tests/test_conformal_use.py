"""Conformal prediction sets used as trained: the rule a run fits on validation travels in best.ckpt and
model.onnx, and predict, the server and the ONNX engine give every image its set."""

from __future__ import annotations

import pandas as pd
import torch
from fastapi.testclient import TestClient

from medimg.config.schema import read
from medimg.config.serve import ServeSettings
from medimg.evaluation.conformal import Conformal
from medimg.inference import load_trained
from medimg.predict import predict
from medimg.serving.app import create_app
from tests.conftest import command_config
from tests.test_serve import image_bytes, part


def _images(folder):
    folder.mkdir()
    for i in range(4):
        (folder / f"img{i}.png").write_bytes(image_bytes(40 + i))
    return folder


def _sets_of(frame: pd.DataFrame, rule: Conformal, names: list[str]) -> list[str]:
    probs = torch.tensor(frame[[f"p_{c}" for c in names]].to_numpy())
    return ["|".join(s) for s in rule.named_sets(probs, names)]


def test_predict_and_the_onnx_engine_give_the_checkpoints_sets(tiny_ckpt, tmp_path, capsys):
    from medimg.export import export_onnx

    trained = load_trained(tiny_ckpt)
    rule, names = trained.conformal, trained.class_names
    assert rule is not None and rule.score == "lac" and rule.alpha == 0.1
    images = _images(tmp_path / "images")
    predict(command_config("predict", tmp_path / "p", f"ckpt_path={tiny_ckpt}", f"input={images}",
                           f"output_dir={tmp_path / 'p'}"))
    out = capsys.readouterr().out
    assert "prediction sets: LAC sets at 90% coverage" in out and "set: {" in out
    frame = pd.read_csv(tmp_path / "p" / "predictions.csv", keep_default_na=False)
    assert frame["prediction_set"].tolist() == _sets_of(frame, rule, names)
    onnx = export_onnx(tiny_ckpt, tmp_path / "model.onnx", opset=17, check=True, atol=1e-4)
    predict(command_config("predict", tmp_path / "o", f"onnx_path={onnx['path']}", "engine=onnx",
                           f"input={images}", f"output_dir={tmp_path / 'o'}"))
    again = pd.read_csv(tmp_path / "o" / "predictions.csv", keep_default_na=False)
    assert again["prediction_set"].tolist() == frame["prediction_set"].tolist()


def test_the_server_answers_with_the_set_in_words(tiny_ckpt, tmp_path):
    trained = load_trained(tiny_ckpt)
    settings = read(ServeSettings, command_config("serve", tmp_path, f"ckpt_path={tiny_ckpt}"), "")
    with TestClient(create_app(settings)) as client:
        response = client.post("/predict", files=[part("a.png", image_bytes(7))])
    one = response.json()["results"][0]
    probs = torch.tensor([[one["probabilities"][c] for c in trained.class_names]])
    expected = trained.conformal.named_sets(probs, trained.class_names)[0]
    assert one["prediction_set"]["classes"] == expected and one["prediction_set"]["coverage"] == 0.9
    assert one["prediction_set"]["text"] == f"at 90% coverage: {', '.join(expected)}"
