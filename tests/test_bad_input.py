"""Bad input on every path: each mistake is one UserError naming the thing and the fix (one ``error:`` line on
the command line, no traceback), the user's data folder is left as it was, and a failed write leaves no
half-written file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medimg.cli import run_task
from medimg.errors import CheckpointError, UserError, WriteError
from medimg.files import atomic_write, writable_folder, write_text
from medimg.train import train
from tests.conftest import TINY_ANY_DATA, command_config, compose_train

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("benign", "malignant")


def _set(root: Path, rows: list[str] | None = None) -> Path:
    """root/labels.csv (``rows`` after the header path,label,patient; default 12 valid rows) and its images."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 255, (12, 12, 3), dtype=np.uint8)).save(root / "img" / f"{i}.png")
    rows = rows if rows is not None else [f"img/{i}.png,{LABELS[i % 2]},P{i // 2}" for i in range(12)]
    (root / "labels.csv").write_text("\n".join(["path,label,patient", *rows]) + "\n")
    return root / "labels.csv"


def _listing(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): p.stat().st_size for p in sorted(root.rglob("*"))}


def _good(i: int) -> str:
    return f"img/{i}.png,{LABELS[i % 2]},P{i // 2}"


CSV_MISTAKES = {
    "no file": (None, [], "label file .*labels_missing.csv does not exist; set dataset.csv"),
    "missing image": ([*map(_good, range(11)), "img/404.png,benign,P9"], [],
                      r"1 image\(s\) listed in .* do not exist .*line 13: .*404.png"),
    "unknown label": ([*map(_good, range(11)), "img/11.png,melanom,P5"], ["dataset.classes=[benign,malignant]"],
                      r"labels \['melanom'\] \(lines \[13\]\) are not among dataset.classes"),
    "empty label": ([*map(_good, range(11)), "img/11.png,,P5"], [], r"empty 'label' cells on lines \[13\]"),
    "empty path": ([*map(_good, range(11)), ",benign,P5"], [], r"empty 'path' cells on lines \[13\]"),
    "duplicate rows": ([*map(_good, range(12)), _good(3)], [], r"img/3.png is listed twice"),
    "header only": ([], [], "has no rows"),
    "missing column": (None, ["dataset.label_column=diagnosis"],
                       r"column 'diagnosis' \(dataset.label_column\) is not in .*; its columns are"),
    "one class": ([f"img/{i}.png,benign,P{i}" for i in range(12)], [], "has a single class"),
    "unknown group column": (None, ["dataset.group_column=subject"], r"column 'subject' \(dataset.group_column\)"),
    "one listed class": (None, ["dataset.classes=[benign]"], r"labels \['malignant'\] .* are not among"),
}


@pytest.mark.parametrize("case", list(CSV_MISTAKES))
def test_every_csv_mistake_is_one_user_error_and_the_folder_is_left_alone(case, tmp_path):
    rows, overrides, message = CSV_MISTAKES[case]
    root = tmp_path / "set"
    csv = _set(root, rows)
    if case == "no file":
        csv = root / "labels_missing.csv"
    before = _listing(root)
    cfg = compose_train(tmp_path / "run", tmp_path / "data", [*TINY_ANY_DATA, "dataset=csv", f"dataset.csv={csv}",
                                                                "dataset.group_column=patient", *overrides])
    with pytest.raises(UserError, match=message):
        train(cfg)
    assert _listing(root) == before


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\xff\xfe binary, not text \x00"])
def test_an_empty_or_binary_label_file_is_named(content, tmp_path):
    csv = tmp_path / "labels.csv"
    csv.write_bytes(content)
    cfg = compose_train(tmp_path / "run", tmp_path / "data", [*TINY_ANY_DATA, "dataset=csv", f"dataset.csv={csv}"])
    with pytest.raises(UserError, match=f"{csv} is (empty|not a readable CSV file)"):
        train(cfg)


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDIMG_ROOT": str(cwd), "PYTHONWARNINGS": "ignore"}
    env.pop("HYDRA_FULL_ERROR", None)
    env.pop("MEDIMG_DEBUG", None)
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _one_error_line(proc: subprocess.CompletedProcess, says: str) -> None:
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and says in errors[0], proc.stderr[-2000:]


def test_a_csv_mistake_on_the_command_line_is_one_line(tmp_path):
    csv = _set(tmp_path / "set", [*map(_good, range(11)), "img/11.png,melanom,P5"])
    proc = _cli("medimg.train", "dataset=csv", f"dataset.csv={csv}", "dataset.classes=[benign,malignant]",
                "backbone.weights=null", f"paths.data_dir={tmp_path / 'data'}", cwd=tmp_path)
    _one_error_line(proc, "labels ['melanom'] (lines [13]) are not among dataset.classes=['benign', 'malignant']")


def test_a_run_folder_that_cannot_be_created_is_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("in the way")
    proc = _cli("medimg.train", f"hydra.run.dir={blocker / 'run'}", "backbone.weights=null", cwd=tmp_path)
    _one_error_line(proc, f"cannot write into the folder {blocker / 'run'}: a file is in the way of the folder; "
                          "write elsewhere (hydra.run.dir=<folder>")


@pytest.mark.parametrize("code,reason", [(errno.ENOSPC, "no space is left on the device"),
                                         (errno.EROFS, "the file system is read-only")])
def test_a_failed_write_names_the_file_and_keeps_the_old_one(code, reason, tmp_path, monkeypatch):
    target = write_text(tmp_path / "out" / "metrics.json", "old\n")

    def full(src, dst):
        raise OSError(code, os.strerror(code), str(src))

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(WriteError, match=f"cannot write {target}: {reason}"):
        write_text(target, "new\n")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]  # no temporary left


def test_an_error_that_is_not_the_write_passes_through(tmp_path):
    with pytest.raises(FileNotFoundError), atomic_write(tmp_path / "x.txt"):
        (tmp_path / "no_such_input").read_text()  # reading an input, not writing the file
    assert list(tmp_path.iterdir()) == []


def test_writable_folder_refuses_a_folder_it_cannot_write(tmp_path, monkeypatch):
    assert writable_folder(tmp_path / "new" / "folder", "output_dir=").is_dir()
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "TemporaryFile", read_only)
    with pytest.raises(WriteError, match=r"into the folder .*: the file system is read-only; write elsewhere "
                                         r"\(output_dir=<folder>\)"):
        writable_folder(tmp_path / "ro", "output_dir=<folder>")


def test_a_library_write_on_a_full_disk_is_one_line(capsys):
    def checkpoint_write():
        raise OSError(errno.ENOSPC, "No space left on device", "/runs/x/checkpoints/last.ckpt")

    with pytest.raises(SystemExit) as stop:
        run_task(checkpoint_write)
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: cannot write /runs/x/checkpoints/last.ckpt: no space is left on the device; free space "
                   "there or write elsewhere (paths.log_dir=<folder>, or output_dir=)"]


def _predict_cfg(ckpt: Path, images: Path, out: Path, *overrides: str) -> dict:
    return command_config("predict", out, f"ckpt_path={ckpt}", f"input={images}", f"output_dir={out}",
                          "device=cpu", *overrides)


@pytest.fixture
def images(tmp_path) -> Path:
    folder = tmp_path / "images"
    folder.mkdir()
    Image.fromarray(np.zeros((20, 20, 3), np.uint8)).save(folder / "a.png")
    return folder


def _tampered(tiny_ckpt: Path, dst: Path, change) -> Path:
    ckpt = torch.load(tiny_ckpt, map_location="cpu", weights_only=True)
    change(ckpt)
    torch.save(ckpt, dst)
    return dst


def test_predict_with_an_unknown_calibration_in_the_checkpoint(tiny_ckpt, images, tmp_path):
    from medimg.predict import predict

    ckpt = _tampered(tiny_ckpt, tmp_path / "c.ckpt", lambda c: c["medimg"].update(calibration={"method": "beta"}))
    with pytest.raises(CheckpointError, match="calibration names the method 'beta', which is not one of"):
        predict(_predict_cfg(ckpt, images, tmp_path / "out"))


def test_predict_with_a_huge_input_size_in_the_checkpoint(tiny_ckpt, images, tmp_path):
    from medimg.predict import predict

    ckpt = _tampered(tiny_ckpt, tmp_path / "c.ckpt", lambda c: c["hyper_parameters"]["preprocess"].update(img_size=60000))
    with pytest.raises(CheckpointError, match=r"preprocessing is out of range: img_size=60000 \(1..4096\)"):
        predict(_predict_cfg(ckpt, images, tmp_path / "out"))


def test_predict_with_a_file_that_is_not_an_onnx_model(tiny_ckpt, images, tmp_path):
    from medimg.predict import predict

    fake = tmp_path / "model.onnx"
    fake.write_text("not a protobuf")
    with pytest.raises(UserError, match=f"{fake} is not an ONNX model onnxruntime can load"):
        predict(_predict_cfg(tiny_ckpt, images, tmp_path / "out", "engine=onnx", f"onnx_path={fake}"))


def test_an_onnx_model_whose_external_data_leaves_its_folder(tiny_ckpt, images, tmp_path):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from medimg.predict import predict

    weight = numpy_helper.from_array(np.ones((2, 2), np.float32), "w")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    for key, value in {"location": "../secret.bin", "offset": "0", "length": "16"}.items():
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    (tmp_path / "secret.bin").write_bytes(np.ones(4, np.float32).tobytes())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["probs"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 2])], [weight])
    (tmp_path / "m").mkdir()
    onnx.save(helper.make_model(graph), tmp_path / "m" / "model.onnx")
    with pytest.raises(UserError, match="is not an ONNX model onnxruntime can load .*escapes model directory"):
        predict(_predict_cfg(tiny_ckpt, images, tmp_path / "out", "engine=onnx",
                             f"onnx_path={tmp_path / 'm' / 'model.onnx'}"))


def test_torch_save_on_a_full_disk_is_a_write_error(tmp_path, monkeypatch):
    """torch.save reports a full disk as a RuntimeError ("unexpected pos"): with no space left it is a WriteError
    naming the checkpoint; with space left it stays the RuntimeError it is."""
    from medimg import files

    target = tmp_path / "checkpoints" / "last.ckpt"

    def torn(obj, f):
        Path(f).write_bytes(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", torn)
    monkeypatch.setattr(files, "disk_full", lambda folder, slack=1 << 20: True)
    with pytest.raises(WriteError, match=f"cannot write {target}: no space is left on the device"):
        files.save_torch({"a": 1}, target)
    assert list(target.parent.iterdir()) == []  # the partial temporary is gone
    monkeypatch.setattr(files, "disk_full", lambda folder, slack=1 << 20: False)
    with pytest.raises(RuntimeError, match="unexpected pos"):
        files.save_torch({"a": 1}, target)
