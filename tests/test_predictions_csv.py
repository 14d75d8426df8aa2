"""One layout for every predictions.csv: ``python -m medimg.predict`` and ``python -m medimg.evaluate`` (and a
run's test split, the CV ensemble) write it with ``medimg.evaluation.predictions.predictions_frame``."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from medimg.evaluation.predictions import predictions_frame, write_predictions
from medimg.predict import predict
from tests.conftest import command_config


def test_the_layout_and_its_optional_columns(tmp_path):
    probs = torch.tensor([[0.7, 0.3], [0.2, 0.8], [0.45, 0.55]], dtype=torch.float64)
    raw = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.4, 0.6]], dtype=torch.float64)
    meta = pd.DataFrame({"age": ["40", "51", ""], "prediction": ["x", "y", "z"]}, index=[7, 3, 5])
    frame = predictions_frame(["a.png", "b.png", "c.png"], ["benign", "malignant"], probs, torch.tensor([0, 1, 0]),
                              labels=torch.tensor([0, 0, 1]), uncalibrated=raw, meta=meta)
    assert list(frame.columns) == ["path", "label", "prediction", "probability", "age", "meta_prediction",
                                   "p_benign", "p_malignant", "p_uncalibrated_benign", "p_uncalibrated_malignant"]
    assert frame["label"].tolist() == ["benign", "benign", "malignant"]
    assert frame["prediction"].tolist() == ["benign", "malignant", "benign"]  # a threshold's decision, as given
    assert frame["probability"].tolist() == [0.7, 0.8, 0.45]  # the final probability of the decided class
    assert frame["age"].tolist() == ["40", "51", ""] and frame["meta_prediction"].tolist() == ["x", "y", "z"]

    bare = predictions_frame(["a.png"], ["benign", "malignant"], np.array([[1 / 3, 2 / 3]]), [1])
    assert list(bare.columns) == ["path", "prediction", "probability", "p_benign", "p_malignant"]
    text = write_predictions(tmp_path / "predictions.csv", bare).read_text().splitlines()
    assert text == ["path,prediction,probability,p_benign,p_malignant", "a.png,malignant,0.66666667,0.33333333,0.66666667"]


@pytest.mark.slow
def test_predict_and_evaluate_write_the_same_columns(tiny_ckpt, data_dir, tmp_path):
    from hydra import compose, initialize_config_dir

    from medimg.cli import CONF_DIR
    from medimg.evaluate import evaluate

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="evaluate", overrides=[
            f"paths.root_dir={tmp_path}", f"paths.output_dir={tmp_path / 'eval'}", f"paths.data_dir={data_dir}",
            f"ckpt_path={tiny_ckpt}", f"output_dir={tmp_path / 'eval'}", "trainer=cpu",
            "trainer.precision=32-true",  # as predict (precision=32 by default): the same numbers
            "trainer.enable_progress_bar=false", "logger=csv", "evaluation.gallery_per_class=0"])
    evaluate(cfg)
    evaluated = pd.read_csv(tmp_path / "eval" / "predictions.csv")
    images = tmp_path / "images"
    images.mkdir()
    for i, path in enumerate(evaluated["path"][:6]):
        shutil.copy(path, images / f"{i}.png")
    res = predict(command_config("predict", tmp_path / "pred", f"ckpt_path={tiny_ckpt}", f"input={images}",
                                 f"output_dir={tmp_path / 'pred'}", "device=cpu"))
    predicted = pd.read_csv(res.csv_path)

    assert "label" in evaluated and any(c.startswith("p_uncalibrated_") for c in evaluated)  # calibrated model
    fixed = {"path", "prediction", "probability", "prediction_set"}
    shared = [c for c in evaluated.columns if c in fixed or (c.startswith("p_") and not c.startswith("p_uncal"))]
    assert list(predicted.columns) == shared  # less label, metadata (none in the synthetic set), p_uncalibrated_*
    # and the same numbers for the same images: the final (calibrated) probabilities and decisions
    predicted = predicted.assign(i=[int(p.rsplit("/", 1)[-1].split(".")[0]) for p in predicted["path"]])
    predicted = predicted.sort_values("i")
    same = evaluated.iloc[predicted["i"].to_numpy()]
    probs = [c for c in shared if c.startswith("p_") or c == "probability"]
    np.testing.assert_allclose(predicted[probs].to_numpy(), same[probs].to_numpy(), atol=1e-4)
    assert predicted["prediction"].tolist() == same["prediction"].tolist()
