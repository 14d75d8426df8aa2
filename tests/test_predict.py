"""medimg.predict: top-k calibrated probabilities, CSV, Grad-CAM figures, and every kind of bad input."""

from __future__ import annotations

import csv
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medimg.data.inputs import collect_images
from medimg.data.readers import read_image
from medimg.errors import ConfigError
from medimg.errors import UserError as PredictInputError
from medimg.inference import CheckpointError, load_trained
from medimg.predict import expand_shorthands, predict
from tests.conftest import command_config

ROOT = Path(__file__).resolve().parents[1]


def _cfg(ckpt, inp, out, **kw):
    """conf/predict.yaml with these keys (``gradcam_<key>`` for ``gradcam.<key>``), as the command composes it."""
    def value(v):
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    keys = {"ckpt_path": ckpt, "input": inp, "output_dir": out, "top_k": 3, "batch_size": 4, "device": "cpu", **kw}
    overrides = [f"{k.replace('gradcam_', 'gradcam.')}={value(v)}" for k, v in keys.items()]
    return command_config("predict", Path(out), *overrides)


def _with_calibration(src: Path, dst: Path, calibration) -> Path:
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    ckpt["medimg"]["calibration"] = calibration
    torch.save(ckpt, dst)
    return dst


def _rgb(size=(40, 30), seed=0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def _bomb_png(path: Path, width=20000, height=10000) -> Path:
    """A PNG whose header claims more pixels than Pillow will decode (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory) -> Path:
    """Good images of every kind, non-image files and broken images."""
    d = tmp_path_factory.mktemp("mixed")
    _rgb().save(d / "rgb.png")
    _rgb(seed=1).save(d / "photo.jpg", quality=90)
    _rgb(seed=2).convert("L").save(d / "gray.png")
    rgba = _rgb(seed=3).convert("RGBA")
    rgba.putalpha(128)
    rgba.save(d / "rgba.png")
    Image.fromarray(np.random.default_rng(4).integers(0, 65535, (30, 40), dtype=np.uint16)).save(d / "deep16.png")
    (d / "sub").mkdir()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (3000, 4000, 3), dtype=np.uint8)).save(
        d / "sub" / "large.jpg", quality=70)  # 12 megapixels
    (d / "notes.txt").write_text("not an image")
    (d / "labels.csv").write_text("a,b\n")
    (d / "fake.png").write_text("this is text with an image suffix")
    good = d / "rgb.png"
    (d / "truncated.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    (d / ".hidden.png").write_bytes(good.read_bytes())
    return d


def test_collect_images_skips_non_images(mixed_folder):
    images, skipped = collect_images(mixed_folder)
    names = sorted(p.name for p in images)
    assert "large.jpg" in names and "fake.png" in names and ".hidden.png" not in names
    assert sorted(p.name for p in skipped) == ["labels.csv", "notes.txt"]


def test_folder_with_every_kind_of_input(tiny_ckpt, mixed_folder, tmp_path, capsys):
    res = predict(_cfg(tiny_ckpt, mixed_folder, tmp_path))
    good = {"rgb.png", "photo.jpg", "gray.png", "rgba.png", "deep16.png", "large.jpg"}
    assert {Path(r["path"]).name for r in res.rows} == good
    assert len(res.skipped) == 2
    assert sorted(Path(p).name for p in res.unreadable) == ["fake.png", "truncated.png"]
    out = capsys.readouterr().out
    assert "skipped 2 non-image file(s) and 2 unreadable image(s)" in out
    with open(res.csv_path) as f:
        rows = list(csv.DictReader(f))
    classes = load_trained(tiny_ckpt).class_names
    assert len(rows) == 6 and list(rows[0])[:3] == ["path", "prediction", "probability"]
    for r in rows:
        p = np.array([float(r[f"p_{c}"]) for c in classes])
        assert p.sum() == pytest.approx(1, abs=1e-4)
        assert r["prediction"] == classes[int(p.argmax())]
        assert float(r["probability"]) == pytest.approx(p.max(), abs=1e-6)


def test_single_image_top_k_matches_the_model(tiny_ckpt, tmp_path, capsys):
    img = tmp_path / "one.png"
    _rgb(seed=7).save(img)
    res = predict(_cfg(tiny_ckpt, img, tmp_path / "out", top_k=2))
    trained = load_trained(tiny_ckpt)
    x = trained.preprocess.transform()(read_image(img))[None]
    with torch.no_grad():
        ref = trained.probs(trained.model(x))[0].numpy()
    got = np.array([res.rows[0][f"p_{c}"] for c in trained.class_names])
    np.testing.assert_allclose(got, ref, atol=1e-5)
    line = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("one.png:")][0]
    assert line.count("|") == 1  # top_k=2: two classes printed
    assert line.split(":")[1].split()[0] == trained.class_names[int(ref.argmax())]


def test_uncalibrated_checkpoint_says_so(tiny_ckpt, tmp_path, capsys):
    ckpt = _with_calibration(tiny_ckpt, tmp_path / "nocal.ckpt", None)
    img = tmp_path / "a.png"
    _rgb().save(img)
    res = predict(_cfg(ckpt, img, tmp_path / "out"))
    assert len(res.rows) == 1
    assert "UNCALIBRATED" in capsys.readouterr().out


def test_temperature_calibration_is_applied(tiny_ckpt, tmp_path, capsys):
    img = tmp_path / "a.png"
    _rgb(seed=3).save(img)
    plain = predict(_cfg(_with_calibration(tiny_ckpt, tmp_path / "n.ckpt", None), img, tmp_path / "o1")).rows[0]
    cal = {"method": "temperature", "temperature": 4.0}
    hot = predict(_cfg(_with_calibration(tiny_ckpt, tmp_path / "t.ckpt", cal), img, tmp_path / "o2")).rows[0]
    assert "calibrated (temperature, T = 4" in capsys.readouterr().out
    classes = load_trained(tiny_ckpt).class_names
    p = np.array([plain[f"p_{c}"] for c in classes])
    q = np.array([hot[f"p_{c}"] for c in classes])
    expected = np.exp(np.log(p) / 4) / np.exp(np.log(p) / 4).sum()  # softmax(z / T) from softmax(z)
    np.testing.assert_allclose(q, expected, atol=1e-5)


def _binary(src: Path, dst: Path, calibration) -> Path:
    """The tiny checkpoint cut down to its first two classes (a binary model), with ``calibration``."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    hp = ckpt["hyper_parameters"]
    hp["class_names"] = hp["class_names"][:2]
    if hp.get("class_weights"):
        hp["class_weights"] = hp["class_weights"][:2]
    for k in ("net.fc.1.weight", "net.fc.1.bias"):
        ckpt["state_dict"][k] = ckpt["state_dict"][k][:2].clone()
    ckpt["medimg"]["calibration"] = calibration
    torch.save(ckpt, dst)
    return dst


def test_binary_operating_threshold_decides(tiny_ckpt, tmp_path, capsys):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(4):
        _rgb(seed=i).save(d / f"{i}.png")
    strict = predict(_cfg(_binary(tiny_ckpt, tmp_path / "s.ckpt", {"method": "none", "threshold": 0.999}), d,
                          tmp_path / "o1")).rows
    lenient = predict(_cfg(_binary(tiny_ckpt, tmp_path / "l.ckpt", {"method": "none", "threshold": 0.001}), d,
                           tmp_path / "o2")).rows
    names = load_trained(tmp_path / "s.ckpt").class_names
    assert all(r["prediction"] == names[0] for r in strict)
    assert all(r["prediction"] == names[1] for r in lenient)
    assert f"decision: {names[1]} when P({names[1]}) >= 0.001" in capsys.readouterr().out


def test_tta_averages_the_same_views_as_evaluate(tiny_ckpt, tmp_path):
    img = tmp_path / "a.png"
    _rgb(seed=9).save(img)
    _rgb(seed=9).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(tmp_path / "hflip.png")
    _rgb(seed=9).transpose(Image.Transpose.FLIP_TOP_BOTTOM).save(tmp_path / "vflip.png")
    classes = load_trained(tiny_ckpt).class_names
    a = predict(_cfg(tiny_ckpt, img, tmp_path / "o1")).rows[0]
    h = predict(_cfg(tiny_ckpt, tmp_path / "hflip.png", tmp_path / "o2")).rows[0]
    v = predict(_cfg(tiny_ckpt, tmp_path / "vflip.png", tmp_path / "o3")).rows[0]
    t = predict(_cfg(tiny_ckpt, img, tmp_path / "o4", tta=True)).rows[0]  # tta_views: [hflip, vflip], as evaluate
    t2 = predict(_cfg(tiny_ckpt, img, tmp_path / "o5", tta=True, tta_views="[hflip]")).rows[0]
    for c in classes:
        assert t[f"p_{c}"] == pytest.approx((a[f"p_{c}"] + h[f"p_{c}"] + v[f"p_{c}"]) / 3, abs=1e-5)
        assert t2[f"p_{c}"] == pytest.approx((a[f"p_{c}"] + h[f"p_{c}"]) / 2, abs=1e-5)
    evaluate_defaults = command_config("evaluate", tmp_path / "e", "ckpt_path=x")
    assert command_config("predict", tmp_path / "p")["tta_views"] == evaluate_defaults["tta_views"]


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_an_unknown_tta_view_is_refused_by_the_settings(command, tmp_path):
    from medimg.config.commands import EvaluateSettings, PredictSettings
    from medimg.config.schema import read

    extra = ["input=/nonexistent"] if command == "predict" else []
    cfg = command_config(command, tmp_path, "ckpt_path=/nonexistent/best.ckpt", "tta=true", "tta_views=[hflip,spin]",
                         *extra)
    cfg.pop("dataset", None)
    with pytest.raises(ConfigError, match=r"tta_views: 'spin' is not one of hflip, vflip, rot90, rot180, rot270"):
        read(PredictSettings if command == "predict" else EvaluateSettings, cfg, "")


def test_gradcam_figures(tiny_ckpt, tmp_path):
    d = tmp_path / "imgs"
    d.mkdir()
    for i in range(3):
        _rgb(seed=i).save(d / f"im{i}.png")
    classes = load_trained(tiny_ckpt).class_names
    res = predict(_cfg(tiny_ckpt, d, tmp_path / "out", gradcam_enabled=True, gradcam_method="eigencam",
                       gradcam_target=classes[1], gradcam_layer="layer3"))
    assert sorted(Path(f).name for f in res.figures) == ["im0.png", "im1.png", "im2.png"]
    for f in res.figures:
        with Image.open(f) as im:
            assert im.width > 2.5 * im.height  # image | heat map | overlay


def test_gradcam_target_must_be_a_class(tiny_ckpt, tmp_path):
    img = tmp_path / "a.png"
    _rgb().save(img)
    with pytest.raises(PredictInputError, match="not a class of this model"):
        predict(_cfg(tiny_ckpt, img, tmp_path / "o", gradcam_enabled=True, gradcam_target="banana"))


def test_bf16_is_close_to_fp32(tiny_ckpt, tmp_path):
    img = tmp_path / "a.png"
    _rgb(seed=11).save(img)
    classes = load_trained(tiny_ckpt).class_names
    a = predict(_cfg(tiny_ckpt, img, tmp_path / "o1")).rows[0]
    b = predict(_cfg(tiny_ckpt, img, tmp_path / "o2", precision="bf16")).rows[0]
    assert max(abs(a[f"p_{c}"] - b[f"p_{c}"]) for c in classes) < 1e-2


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_path(tiny_ckpt, tmp_path):
    with pytest.raises(PredictInputError, match="does not exist"):
        predict(_cfg(tiny_ckpt, tmp_path / "nope.png", tmp_path / "o"))


def test_single_file_that_is_not_an_image(tiny_ckpt, tmp_path):
    f = tmp_path / "report.txt"
    f.write_text("hello")
    with pytest.raises(PredictInputError, match=r"cannot read image .*report.txt.*Supported files"):
        predict(_cfg(tiny_ckpt, f, tmp_path / "o"))


def test_truncated_image(tiny_ckpt, tmp_path):
    good = tmp_path / "good.jpg"
    _rgb((200, 200)).save(good, quality=95)
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(good.read_bytes()[:300])
    with pytest.raises(PredictInputError, match="bad.jpg"):
        predict(_cfg(tiny_ckpt, bad, tmp_path / "o"))


def test_decompression_bomb_fails_clearly(tiny_ckpt, tmp_path):
    bomb = _bomb_png(tmp_path / "huge.png")
    with pytest.raises(PredictInputError, match=r"huge.png.*refused before decoding.*max_image_pixels"):
        predict(_cfg(tiny_ckpt, bomb, tmp_path / "o"))


def test_folder_without_images(tiny_ckpt, tmp_path):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "a.txt").write_text("x")
    with pytest.raises(PredictInputError, match=r"no image files.*1 other files skipped"):
        predict(_cfg(tiny_ckpt, d, tmp_path / "o"))


def test_bad_checkpoint(tmp_path):
    img = tmp_path / "a.png"
    _rgb().save(img)
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        predict(_cfg(junk, img, tmp_path / "o"))
    with pytest.raises(CheckpointError, match="does not exist"):
        predict(_cfg(tmp_path / "missing.ckpt", img, tmp_path / "o"))


def test_checkpoint_of_another_version_is_named(tiny_ckpt, tmp_path):
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"].pop("preprocess")
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    img = tmp_path / "a.png"
    _rgb().save(img)
    with pytest.raises(CheckpointError, match=r"old.ckpt was written by another medimg version"):
        predict(_cfg(old, img, tmp_path / "o"))


def test_gradcam_shorthand():
    assert expand_shorthands(["x", "gradcam=true", "gradcam.method=scorecam"]) == \
        ["x", "gradcam.enabled=true", "gradcam.method=scorecam"]
    assert expand_shorthands(["gradcam=False"]) == ["gradcam.enabled=false"]


def test_cli(tiny_ckpt, tmp_path):
    img = tmp_path / "cli.png"
    _rgb().save(img)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "medimg.predict", f"ckpt_path={tiny_ckpt}", f"input={img}",
                        "gradcam=true", f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cli.png:" in r.stdout and (out / "predictions.csv").is_file()
    assert (out / "gradcam" / "cli.png").is_file()
    r = subprocess.run([sys.executable, "-m", "medimg.predict", f"ckpt_path={tiny_ckpt}", f"input={tmp_path / 'x'}",
                        f"output_dir={out}", f"hydra.run.dir={tmp_path / 'run'}"],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0 and "does not exist" in r.stderr and "Traceback" not in r.stderr
