"""Corruptions (ImageNet-C families): deterministic per seed, severity 0 is the identity, distortion rises with
severity; the robustness evaluation writes its table, summary, figures and report in its own folder."""

from __future__ import annotations

import colorsys
import json
import types

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from medimg.errors import ConfigError
from medimg.evaluation.calibration import Uncalibrated
from medimg.evaluation.robustness.corruptions import CORRUPTIONS, PARAMETERS, corrupt
from medimg.evaluation.robustness.measure import (
    CorruptedImages,
    corruption_summary,
    evaluate_robustness,
    split_eval_transform,
)


def _image(seed: int = 0, side: int = 96) -> np.ndarray:
    """Gradients, a textured square and a few black pixels: something every corruption can change. (The blur
    scales with the image: at 96 px its severity-1 sigma is 0.43 px.)"""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:side, 0:side]
    img = np.stack([xx * 255 // side, yy * 255 // side, (xx + yy) * 127 // side], -1).astype(np.uint8)
    a, b = side // 5, side // 2
    img[a:b, a:b] = rng.integers(0, 256, (b - a, b - a, 3))
    img[:3, :3] = 0
    return img


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_identity_at_zero_determinism_and_monotone_distortion(name):
    img = _image()
    same = corrupt(img, name, 0, seed=3, index=1)
    assert same.dtype == np.uint8 and np.array_equal(same, img) and same is not img
    distortion = [np.abs(corrupt(img, name, s, seed=3, index=1).astype(float) - img).mean() for s in range(6)]
    assert distortion[0] == 0 and all(b > a for a, b in zip(distortion, distortion[1:])), distortion
    for s in (1, 5):
        a, b = corrupt(img, name, s, seed=3, index=1), corrupt(img, name, s, seed=3, index=1)
        assert a.shape == img.shape and a.dtype == np.uint8 and np.array_equal(a, b)


def test_noise_depends_on_seed_and_image_index_only():
    img = _image()
    a = corrupt(img, "gaussian_noise", 2, seed=0, index=5)
    assert not np.array_equal(a, corrupt(img, "gaussian_noise", 2, seed=1, index=5))
    assert not np.array_equal(a, corrupt(img, "gaussian_noise", 2, seed=0, index=6))
    noise = (a / 255.0 - img / 255.0)[img.astype(float).clip(40, 215) == img]  # unclipped pixels
    assert abs(noise.std() - PARAMETERS["gaussian_noise"][1]) < 0.01


def test_brightness_and_contrast_follow_imagenet_c():
    img = _image(1, 16)
    got = corrupt(img, "brightness", 3, seed=0) / 255.0
    c = PARAMETERS["brightness"][2]
    for y, x in [(0, 0), (5, 7), (12, 20 % 16), (15, 15)]:
        h, s, v = colorsys.rgb_to_hsv(*(img[y, x] / 255.0))  # ImageNet-C: HSV value + c
        want = colorsys.hsv_to_rgb(h, s, min(1.0, v + c))
        np.testing.assert_allclose(got[y, x], want, atol=1 / 255 + 1e-9)
    x = img / 255.0
    mean = x.mean(axis=(0, 1), keepdims=True)
    want = np.clip(np.rint(((x - mean) * PARAMETERS["contrast"][4] + mean) * 255), 0, 255)
    np.testing.assert_array_equal(corrupt(img, "contrast", 5), want)


def test_unknown_corruption_or_severity_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown corruptions \\['fog'\\]"):
        corrupt(_image(), "fog", 1)
    with pytest.raises(ConfigError, match="severities \\[6\\]"):
        corrupt(_image(), "contrast", 6)
    with pytest.raises(ValueError, match="uint8"):
        corrupt(_image().astype(float), "contrast", 1)


def test_summary_numbers():
    table = pd.DataFrame({"corruption": ["none", "blur", "blur", "noise", "noise"], "severity": [0, 1, 2, 1, 2],
                          "auroc": [0.9, 0.8, 0.6, 0.9, 0.7]})
    s = corruption_summary(table, "auroc")
    assert s["clean"] == 0.9
    assert s["corruption_error"] == pytest.approx({"blur": 0.3, "noise": 0.2})
    assert s["mean_corruption_error"] == pytest.approx(0.25)
    assert s["relative_corruption_error"] == pytest.approx(2.5)
    assert s["degradation"] == pytest.approx(0.15)
    assert corruption_summary(table.assign(auroc=[1.0, 0.9, 0.8, 1.0, 0.9]), "auroc")["relative_corruption_error"] is None


class _ContrastModel(nn.Module):
    """Class 1 when the image has contrast (standard deviation of the normalised pixels) above 0.5."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))
        self.class_names = ["flat", "textured"]

    def forward(self, x):
        s = self.scale * (x.flatten(1).std(1) - 0.5)
        return torch.stack([-s, s], 1)


def _test_split(tmp_path, n: int = 16):
    rng = np.random.default_rng(0)
    paths, targets = [], []
    for i in range(n):
        textured = i % 2 == 1
        img = rng.integers(0, 256, (40, 40, 3)) if textured else rng.integers(110, 146, (40, 40, 3))
        Image.fromarray(img.astype(np.uint8)).save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
        targets.append(int(textured))
    base = types.SimpleNamespace(paths=paths, targets=torch.tensor(targets),
                                 reader=lambda p: Image.open(p).convert("RGB"))
    eval_tf = v2.Compose([v2.ToImage(), v2.Resize(32, antialias=True), v2.CenterCrop(32),
                          v2.ToDtype(torch.float32, scale=True), v2.Normalize([0.5] * 3, [0.25] * 3)])
    return types.SimpleNamespace(datasets={"test": base}, eval_tf=eval_tf)


def test_corrupted_dataset_matches_the_clean_pipeline_at_severity_zero(tmp_path):
    dm = _test_split(tmp_path)
    clean = CorruptedImages(dm.datasets["test"], dm.eval_tf, "none", 0, seed=0)
    x, y, i = clean[3]
    ref = dm.eval_tf(dm.datasets["test"].reader(dm.datasets["test"].paths[3]))
    torch.testing.assert_close(x, ref) and None
    assert int(y) == 1 and i == 3 and clean.corrupted(3).shape == (32, 32, 3)
    geometry, normalise = split_eval_transform(dm.eval_tf)
    assert len(geometry.transforms) == 3 and len(normalise.transforms) == 2


def test_evaluate_robustness_writes_its_folder(tmp_path):
    dm = _test_split(tmp_path)
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    out = tmp_path / "robustness"
    summary = evaluate_robustness(trainer, _ContrastModel(), dm, Uncalibrated(), out, ["contrast", "gaussian_blur"], [1, 3, 5],
                                  seed=0, metric="accuracy", split="test", batch_size=8, num_workers=0)
    table = pd.read_csv(out / "robustness.csv")
    assert len(table) == 1 + 2 * 3 and set(table["corruption"]) == {"none", "contrast", "gaussian_blur"}
    assert summary["clean"] == 1.0  # the clean split is separable by contrast
    contrast = table[table["corruption"] == "contrast"].sort_values("severity")["accuracy"].tolist()
    assert contrast[-1] < 1.0 and contrast == sorted(contrast, reverse=True)  # contrast loss costs accuracy
    saved = json.loads((out / "robustness.json").read_text())
    assert saved["mean_corruption_error"] == pytest.approx(1 - table[table["severity"] > 0]["accuracy"].mean())
    assert saved["images"] == 16 and saved["severities"] == [1, 3, 5]
    for fig in ("robustness.png", "corruption_examples.png"):
        assert (out / "figures" / fig).stat().st_size > 3000
    report = (out / "report.md").read_text()
    assert "| contrast |" in report and "mean corruption error" in report and "figures/robustness.png" in report
