"""The GPU path, end to end through the command-line entry points, and the GPU check's own machinery.

Tests marked ``gpu`` skip without CUDA; ``make gpu-check`` (benchmarks/gpu_check.py) runs them on a GPU
machine: two_stage fits with ``trainer=gpu`` in bf16-mixed and in 16-mixed with channels_last, the
feature-cached head on the device, predict / explain / export of the device-trained checkpoint, and a CPU
evaluation of the same checkpoint that must agree within bf16 tolerance. ``MEDIMG_GPU_TEST_DEVICE=cpu`` (the
check's ``--cpu-smoke``) runs the same tests on the CPU, fp16 left out. The unmarked tests run everywhere: the
check without a GPU, its time boxes, its utilisation sampling.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:  # the check's own modules (benchmarks/gpu/)
    sys.path.insert(0, str(REPO / "benchmarks"))

DEVICE = os.environ.get("MEDIMG_GPU_TEST_DEVICE", "cuda")
ON_CUDA = DEVICE == "cuda"
needs_device = pytest.mark.skipif(ON_CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU")
DATA = ["dataset.num_images=240", "dataset.img_size=64"]
TRAIN = ["trainer=gpu", *([] if ON_CUDA else ["trainer.accelerator=cpu"]), "backbone.weights=null", *DATA,
         "dataset.num_workers=2", "dataset.batch_size=32", "stage=two_stage", "trainer.max_epochs=2",
         "stage.phases.head.head_fit=epochs",  # a Lightning fit on the device's cached features, timed
         "trainer.enable_progress_bar=false", "logger=many", "callbacks.gradcam.every_n_epochs=1",
         "callbacks.throughput=true"]
BF16_TOL = {"probs_max": 0.05, "probs_mean": 0.01, "metric": 0.03, "rank_metric": 0.05}
PROCESS_TIMEOUT_S = 300


def _launch(log: Path, module: str, *args: str) -> tuple[subprocess.Popen, Path]:
    env = dict(os.environ, PYTHONUNBUFFERED="1", MPLBACKEND="Agg")
    out = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT)
    out.close()
    return proc, log


def _finish(procs: dict[str, tuple[subprocess.Popen, Path]]) -> None:
    """Wait for every process; fail with the end of the log of each that did not exit 0. Whatever stops the
    wait (a timeout of its own or of pytest-timeout), no process is left running."""
    failed = []
    try:
        for name, (proc, log) in procs.items():
            try:
                rc = proc.wait(timeout=PROCESS_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                rc = "timeout"
            if rc != 0:
                failed.append(f"--- {name} (exit {rc}):\n" + "\n".join(log.read_text().splitlines()[-30:]))
    finally:
        for proc, _ in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert not failed, "\n".join(failed)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two_stage fits on the device, in parallel: bf16-mixed, and (CUDA only) 16-mixed with channels_last."""
    tmp = tmp_path_factory.mktemp("gpu_runs")
    settings = {"bf16": ["trainer.precision=bf16-mixed"]}
    if ON_CUDA:
        settings["fp16"] = ["trainer.precision=16-mixed", "model.channels_last=true"]
    procs = {k: _launch(tmp / f"{k}.log", "medimg.train", *TRAIN, *extra, f"paths.root_dir={tmp}",
                        f"paths.data_dir={tmp / ('data_' + k)}", f"hydra.run.dir={tmp / k}")
             for k, extra in settings.items()}
    _finish(procs)
    return {"tmp": tmp, **{k: tmp / k for k in settings}}


@pytest.fixture(scope="module")
def derived(runs) -> dict[str, Path]:
    """From the bf16 run's best.ckpt: predict (fp32 with Grad-CAM, bf16, ONNX), export, explain on the device
    and on the CPU, and a CPU fp32 evaluation that fits its own calibration; processes run in parallel."""
    tmp, ckpt = runs["tmp"], runs["bf16"] / "checkpoints" / "best.ckpt"
    images = tmp / "inputs"
    images.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(8):
        Image.fromarray(rng.integers(0, 255, (60 + 4 * i, 80, 3), dtype=np.uint8)).save(images / f"img{i}.png")
    out = {k: tmp / k for k in ("pred32", "pred16", "export", "onnx", "explain_dev", "explain_cpu", "eval_cpu")}

    def predict(name: str, *args: str):
        return _launch(tmp / f"{name}.log", "medimg.predict", f"ckpt_path={ckpt}", f"input={images}",
                       f"output_dir={out[name]}", f"hydra.run.dir={out[name]}", *args)

    def explain(name: str, device: str):
        return _launch(tmp / f"{name}.log", "medimg.explain", f"ckpt_path={ckpt}", f"device={device}", *DATA,
                       f"paths.data_dir={tmp / 'data_bf16'}", "max_images=16", "road_images=4",
                       "methods=[gradcam]", "layers=[layer4]", "examples=2", f"output_dir={out[name]}",
                       f"hydra.run.dir={out[name]}")

    _finish({
        "predict fp32": predict("pred32", f"device={DEVICE}", "precision=32", "gradcam=true"),
        "predict bf16": predict("pred16", f"device={DEVICE}", "precision=bf16"),
        "export": _launch(tmp / "export.log", "medimg.export", f"ckpt_path={ckpt}", f"output_dir={out['export']}",
                          f"hydra.run.dir={out['export']}"),
        "explain device": explain("explain_dev", DEVICE),
        "explain cpu": explain("explain_cpu", "cpu"),
        "evaluate cpu": _launch(tmp / "eval_cpu.log", "medimg.evaluate", f"ckpt_path={ckpt}", "dataset=synthetic",
                                *DATA, "trainer=cpu", "trainer.precision=32", "recalibrate=true", "logger=csv",
                                "trainer.enable_progress_bar=false", f"paths.root_dir={tmp}",
                                f"paths.data_dir={tmp / 'data_bf16'}", f"output_dir={out['eval_cpu']}",
                                f"hydra.run.dir={out['eval_cpu']}"),
    })
    _finish({"predict onnx": predict("onnx", "engine=onnx", f"onnx_path={out['export'] / 'model.onnx'}",
                                     f"device={DEVICE}")})
    return {"ckpt": ckpt, "run": runs["bf16"], **out}


def _on_device(ckpt: Path) -> set[str]:
    """Device types of the tensors Lightning saved (it saves them where they were trained)."""
    sd = torch.load(ckpt, weights_only=True)["state_dict"]
    return {v.device.type for v in sd.values()}


def _throughput(run: Path) -> dict:
    return json.loads((run / "throughput.json").read_text())


def _probs(folder: Path, prefix: str = "p_") -> pd.DataFrame:
    """The final probabilities ``p_<class>`` (or the columns starting with another prefix: p_uncalibrated_)."""
    df = pd.read_csv(folder / "predictions.csv").set_index("path").sort_index()
    return df[[c for c in df.columns if c.startswith(prefix) and (prefix != "p_" or not c.startswith("p_uncal"))]]


@pytest.mark.gpu
@needs_device
def test_two_stage_bf16_fit_on_the_device(runs):
    metrics = json.loads((runs["bf16"] / "metrics.json").read_text())
    assert np.isfinite(metrics["test/loss"]) and 0.0 <= metrics["test/auroc"] <= 1.0
    phases = _throughput(runs["bf16"])
    assert set(phases) == {"head", "finetune"}
    assert {p["precision"] for p in phases.values()} == {"bf16-mixed"}
    assert _on_device(runs["bf16"] / "checkpoints" / "finetune-best.ckpt") == {DEVICE}
    assert list((runs["bf16"] / "tensorboard").rglob("events.out.tfevents.*")), "no TensorBoard events"


@pytest.mark.gpu
@needs_device
@pytest.mark.skipif(not ON_CUDA, reason="fp16 autocast (16-mixed) needs CUDA")
def test_two_stage_fp16_channels_last_fit(runs):
    metrics = json.loads((runs["fp16"] / "metrics.json").read_text())
    assert np.isfinite(metrics["test/loss"]) and 0.0 <= metrics["test/auroc"] <= 1.0
    assert {p["precision"] for p in _throughput(runs["fp16"]).values()} == {"16-mixed"}
    ckpt = torch.load(runs["fp16"] / "checkpoints" / "finetune-best.ckpt", weights_only=True)
    assert ckpt["hyper_parameters"]["channels_last"] is True
    assert {v.device.type for v in ckpt["state_dict"].values()} == {"cuda"}


@pytest.mark.gpu
@needs_device
def test_feature_cached_head_on_the_device(runs):
    head = _throughput(runs["bf16"])["head"]
    assert set(head["feature_extract_s"]) >= {"train"} and head["feature_extract_s"]["train"] > 0
    assert head["images_trained"] > 0 and head["precision"] == "bf16-mixed"
    assert _on_device(runs["bf16"] / "checkpoints" / "head-best.ckpt") == {DEVICE}
    log = (runs["bf16"] / "train.log").read_text()
    assert "feature cache:" in log and "through the frozen backbone" in log


@pytest.mark.gpu
@needs_device
def test_predict_and_export_of_the_device_model(derived):
    fp32, bf16, onnx = _probs(derived["pred32"]), _probs(derived["pred16"]), _probs(derived["onnx"])
    assert len(fp32) == 8 and fp32.index.equals(bf16.index) and fp32.index.equals(onnx.index)
    assert np.allclose(fp32.sum(axis=1), 1.0, atol=1e-4)
    bf16_diff, onnx_diff = (fp32 - bf16).abs().to_numpy().max(), (fp32 - onnx).abs().to_numpy().max()
    print(f"max |probability difference|: fp32 vs bf16 {bf16_diff:.2e}, fp32 vs onnxruntime {onnx_diff:.2e}")
    assert bf16_diff <= BF16_TOL["probs_max"]
    assert onnx_diff <= 1e-2  # the device's fp32 (TF32 convolutions on CUDA) against onnxruntime on the CPU
    assert len(list((derived["pred32"] / "gradcam").glob("*.png"))) == 8
    assert (derived["export"] / "model.onnx").stat().st_size > 0


@pytest.mark.gpu
@needs_device
def test_explain_on_the_device_agrees_with_the_cpu(derived):
    dev = json.loads((derived["explain_dev"] / "explain.json").read_text())
    cpu = json.loads((derived["explain_cpu"] / "explain.json").read_text())
    assert dev["n_images"] == cpu["n_images"] == 16
    assert abs(dev["accuracy"] - cpu["accuracy"]) <= 2 / 16
    for d, c in zip(dev["maps"], cpu["maps"]):  # fp32 both; TF32 convolutions on CUDA move near-equal maxima
        for model in ("trained", "randomised"):
            scores = [(x[model]["energy_in_mask"], x[model]["pointing_game"]) for x in (d, c)]
            print(f"{d['method']} {d['layer']} {model}: (energy in mask, pointing game) device {scores[0]}, "
                  f"cpu {scores[1]}")
            assert abs(scores[0][0] - scores[1][0]) <= BF16_TOL["probs_max"]
            assert abs(scores[0][1] - scores[1][1]) <= 3 / 16
    assert (derived["explain_dev"] / "examples.png").is_file()


@pytest.mark.gpu
@needs_device
def test_cpu_evaluation_matches_the_device_evaluation(derived):
    """The run's own test evaluation (on the device, bf16, calibration fitted there) against a CPU fp32
    evaluation of the same checkpoint that fits its own calibration on the CPU."""
    dev = json.loads((derived["run"] / "metrics.json").read_text())
    refitted = derived["eval_cpu"] / "refitted"  # recalibrate=true: the calibration fitted on the CPU
    cpu = json.loads((refitted / "metrics.json").read_text())
    for prefix in ("p_uncalibrated_", "p_"):
        d, c = _probs(derived["run"], prefix), _probs(refitted, prefix)
        assert d.index.equals(c.index) and list(d.columns) == list(c.columns) and len(d) > 0
        diff = (d - c).abs().to_numpy()
        print(f"{prefix}*: max |difference| {diff.max():.2e}, mean {diff.mean():.2e} over {len(d)} images")
        assert diff.max() <= BF16_TOL["probs_max"] and diff.mean() <= BF16_TOL["probs_mean"], prefix
    # a decision or an ECE bin can flip for an image near a tie: allow three images' worth
    flips = max(BF16_TOL["rank_metric"], 3 / len(d))
    for key, tol in [*((k, BF16_TOL["metric"] * max(1.0, abs(cpu[k]))) for k in
                       ("test/loss", "test/nll", "test/brier", "test/nll_calibrated", "test/brier_calibrated")),
                     *((k, flips) for k in ("test/auroc", "test/ece", "test/ece_calibrated", "test/accuracy"))]:
        print(f"{key}: device {dev[key]:.4f}, cpu {cpu[key]:.4f}")
        assert abs(dev[key] - cpu[key]) <= tol, key


def test_gpu_check_without_cuda_says_so_and_exits_0(tmp_path):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OUT=str(tmp_path))
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu_check.py")], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA GPU" in proc.stdout
    summary = json.loads((tmp_path / "gpu_check.json").read_text())
    assert summary["cuda"] is False and "steps" not in summary


def test_time_box_stops_the_whole_process_group(tmp_path):
    from gpu.procs import run_boxed

    pid_file = tmp_path / "child.pid"
    code = ("import subprocess, sys, time; c = subprocess.Popen([sys.executable, '-c', 'import time; "
            f"time.sleep(60)']); open({str(pid_file)!r}, 'w').write(str(c.pid)); time.sleep(60)")
    t0 = time.monotonic()
    r = run_boxed([sys.executable, "-c", code], tmp_path / "log.txt", timeout_s=3)
    assert r["timed_out"] and time.monotonic() - t0 < 20
    child = int(pid_file.read_text())
    time.sleep(0.5)
    assert not Path(f"/proc/{child}").exists() or "Z" in Path(f"/proc/{child}/stat").read_text().split()[2]
    assert "time box over" in (tmp_path / "log.txt").read_text()


def test_utilisation_samples_are_parsed_and_windowed():
    from gpu.smi import UtilSampler, summarise

    base = float(int(time.time()))
    lines = [f"{time.strftime('%Y/%m/%d %H:%M:%S', time.localtime(base + i))}.000, {10 * i}, {100 + i}"
             for i in range(6)]
    code = f"import time\nfor line in {lines!r}:\n    print(line, flush=True)\nprint('bad, line, x')\ntime.sleep(30)"
    sampler = UtilSampler([sys.executable, "-c", code])
    assert sampler.start()
    deadline = time.time() + 20
    while len(sampler.samples) < 6 and time.time() < deadline:
        time.sleep(0.1)
    sampler.stop()
    assert [s[1] for s in sampler.samples] == [0, 10, 20, 30, 40, 50]
    window = sampler.window(base + 1.5, base + 4.5)  # the samples of seconds 2, 3 and 4
    assert summarise(window) == {"n": 3, "median": 30.0, "p10": 22.0, "mean": 30.0, "memory_max_mib": 104.0}


def _wheel(folder: Path, filename: str, requires: list[str]) -> Path:
    import zipfile

    name, ver = filename.split("-")[:2]
    path = folder / filename
    with zipfile.ZipFile(path, "w") as z:
        meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {ver}", *(f"Requires-Dist: {r}" for r in requires)]
        z.writestr(f"{name}-{ver}.dist-info/METADATA", "\n".join(meta) + "\n")
    return path


def test_wheel_set_check_finds_missing_duplicate_and_foreign_wheels(tmp_path, capsys):
    from gpu.wheels import check

    _wheel(tmp_path, "good_pkg-1.0-py3-none-any.whl", ["numpy", "torch>=2; python_version >= '3.10'",
                                                        "pytest; extra == 'test'", "typing; python_version < '3'"])
    _wheel(tmp_path, "native_pkg-2.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", [])
    assert check(tmp_path, ["good-pkg", "native_pkg"]) == []
    assert "numpy, torch" in capsys.readouterr().out  # what the target machine must already have

    _wheel(tmp_path, "good_pkg-1.1-py3-none-any.whl", [])
    _wheel(tmp_path, "mac_pkg-1.0-cp312-cp312-macosx_11_0_arm64.whl", [])
    problems = check(tmp_path, ["good-pkg", "native_pkg", "mac_pkg", "absent-pkg"])
    assert any("good-pkg: 2 wheels" in p for p in problems)
    assert any("mac_pkg-1.0-cp312-cp312-macosx_11_0_arm64.whl does not install" in p for p in problems)
    assert any("absent-pkg: 0 wheels" in p for p in problems)
    assert not any(p.startswith("native_pkg") for p in problems)
