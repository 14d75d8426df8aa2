"""Inference speed of the predict paths on this machine.

For ResNet18 and ResNet50 at 224 px (random weights: speed does not depend on them) it measures

- single-image latency (batch 1, from a prepared tensor to calibrated probabilities), and the same with a
  Grad-CAM map added (Grad-CAM always runs in eager fp32: it needs gradients);
- batch throughput in images/s (batch 32);
- agreement with eager fp32: the largest |difference of probabilities| on the throughput batch;

for three paths: PyTorch eager fp32, eager bf16 autocast with channels_last, and onnxruntime (fp32, the
model ``medimg.export`` writes). Every figure is the median over ``--repeats`` timed runs after warm-up,
the paths interleaved run by run so that other load on a shared machine hits them alike.

    python benchmarks/predict_latency.py                       # both backbones, prints a Markdown table
    python benchmarks/predict_latency.py --backbones resnet18 --repeats 5 --json out.json
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from machine import cpu_info
from throughput.build import classifier, compose, data_module
from throughput.data import DATA, folder_overrides, make_images

from medimg.evaluation.calibration import Uncalibrated
from medimg.explain.gradcam import compute_cams
from medimg.export import ExportModel
from medimg.files import write_json
from medimg.models.classifier import ImageClassifier

MODEL_IMAGES = 64  # the model is built for the HAM-like set's 7 classes; its images are not read


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class EagerFP32:
    name = "eager fp32"

    def __init__(self, model: ImageClassifier):
        self.model = model

    def probs(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return Uncalibrated().probs(self.model.net(x).float()).numpy()


class EagerBF16:
    name = "eager bf16 + channels_last"

    def __init__(self, model: ImageClassifier):
        import copy

        self.net = copy.deepcopy(model.net).to(memory_format=torch.channels_last)

    def probs(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
            logits = self.net(x.contiguous(memory_format=torch.channels_last))
        return Uncalibrated().probs(logits.float()).numpy()


class OnnxRuntime:
    name = "onnxruntime fp32"

    def __init__(self, model: ImageClassifier, img_size: int, threads: int, workdir: Path):
        import onnxruntime as ort

        path = workdir / f"{model.hparams.backbone}.onnx"
        wrapper = ExportModel(model.net, Uncalibrated(), model.num_classes).eval()
        torch.onnx.export(wrapper, (torch.zeros(1, 3, img_size, img_size),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["probs", "logits"],
                          dynamic_axes={"image": {0: "batch"}, "probs": {0: "batch"}, "logits": {0: "batch"}})
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")  # leave the cores to Grad-CAM
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    def probs(self, x: torch.Tensor) -> np.ndarray:
        return self.session.run(["probs"], {"image": x.numpy()})[0]


def random_model(backbone: str, img_size: int) -> ImageClassifier:
    """medimg's model for ``backbone`` with random weights, built as a run on the HAM-like images builds it."""
    root = DATA / f"ham-like-n{MODEL_IMAGES}"
    make_images(root, MODEL_IMAGES)
    c = compose([*folder_overrides(root, img_size), f"backbone={backbone}", "backbone.weights=null", "seed=0"])
    return classifier(c, data_module(c)).eval()


def bench_backbone(backbone: str, img_size: int, batch: int, repeats: int, threads: int, workdir: Path):
    """Timings of every path, interleaved (path A, B, C, A, B, C, ...) so that load from other processes on a
    shared machine hits all paths alike; medians per path."""
    model = random_model(backbone, img_size)
    g = torch.Generator().manual_seed(1)
    one = torch.randn(1, 3, img_size, img_size, generator=g)
    many = torch.randn(batch, 3, img_size, img_size, generator=g)
    paths = [EagerFP32(model), EagerBF16(model), OnnxRuntime(model, img_size, threads, workdir)]
    single: dict[str, list[float]] = {p.name: [] for p in paths}
    with_cam: dict[str, list[float]] = {p.name: [] for p in paths}
    batched: dict[str, list[float]] = {p.name: [] for p in paths}
    for p in paths:  # warm-up
        p.probs(many)
        p.probs(one)
        compute_cams(model, one, None, method="gradcam")
    for _ in range(repeats):
        for p in paths:
            batched[p.name].append(_timed(lambda p=p: p.probs(many)))
            for _ in range(4):
                single[p.name].append(_timed(lambda p=p: p.probs(one)))
            for _ in range(2):
                with_cam[p.name].append(
                    _timed(lambda p=p: (p.probs(one), compute_cams(model, one, None, method="gradcam"))))
    ref = paths[0].probs(many)
    rows = []
    for p in paths:
        got = p.probs(many)
        s1, sc, sb = (statistics.median(v[p.name]) for v in (single, with_cam, batched))
        rows.append({
            "backbone": backbone, "path": p.name, "single_ms": 1000 * s1, "single_gradcam_ms": 1000 * sc,
            "throughput_img_s": batch / sb, "max_abs_prob_diff": float(np.abs(got - ref).max()),
            "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
        })
        print(f"  {backbone:9s} {p.name:28s} single {1000 * s1:7.1f} ms  +gradcam {1000 * sc:7.1f} ms  "
              f"{batch / sb:7.1f} img/s  max|dp| {rows[-1]['max_abs_prob_diff']:.1e}", flush=True)
    base = rows[0]["throughput_img_s"]
    for r in rows:
        r["speedup_vs_fp32"] = r["throughput_img_s"] / base
        r["single_speedup_vs_fp32"] = rows[0]["single_ms"] / r["single_ms"]
    return rows


def agreement_on_checkpoint(ckpt: Path, images: Path, limit: int, threads: int, workdir: Path) -> list[dict]:
    """Probabilities of a trained checkpoint on real images: bf16 and onnxruntime against eager fp32."""
    from medimg.data.inputs import collect_images
    from medimg.data.readers import read_image
    from medimg.inference import load_trained

    trained = load_trained(ckpt)
    model, pre = trained.model, trained.preprocess
    tf = pre.transform()
    files, _ = collect_images(images)
    files = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(limit, len(files))).round()]
    x = torch.stack([tf(read_image(f)) for f in files])
    paths = [EagerFP32(model), EagerBF16(model), OnnxRuntime(model, pre.img_size, threads, workdir)]
    ref = paths[0].probs(x)
    rows = []
    for p in paths[1:]:
        got = p.probs(x)
        rows.append({"checkpoint": str(ckpt), "images": len(files), "path": p.name,
                     "max_abs_prob_diff": float(np.abs(got - ref).max()),
                     "argmax_agreement": float((got.argmax(1) == ref.argmax(1)).mean()),
                     "mean_top1_prob_fp32": float(ref.max(1).mean())})
        print(f"  trained checkpoint, {len(files)} images: {p.name:28s} max|dp| {rows[-1]['max_abs_prob_diff']:.1e} "
              f"top-1 agreement {rows[-1]['argmax_agreement']:.3f}", flush=True)
    return rows


def machine() -> dict:
    import onnxruntime

    info = cpu_info()
    return {**info, "torch_threads": torch.get_num_threads(), "fast_bf16": info["avx512_bf16"] or info["amx"],
            "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def to_markdown(rows: list[dict]) -> str:
    out = ["| backbone | path | single image (ms) | + Grad-CAM (ms) | batch 32 (img/s) | vs fp32 | "
           "max abs prob diff | top-1 agreement |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['backbone']} | {r['path']} | {r['single_ms']:.1f} | {r['single_gradcam_ms']:.1f} | "
                   f"{r['throughput_img_s']:.1f} | {r['speedup_vs_fp32']:.2f}x | {r['max_abs_prob_diff']:.1e} | "
                   f"{r['argmax_agreement']:.2f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=["resnet18", "resnet50"])
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=5, help="timed batch runs (single-image runs: 4x as many)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch and onnxruntime threads")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    ap.add_argument("--ckpt", type=Path, default=None, help="also compare the paths' probabilities on a trained model")
    ap.add_argument("--images", type=Path, default=None, help="with --ckpt: a folder of images it was trained on")
    ap.add_argument("--agreement-images", type=int, default=256, help="with --ckpt: how many images to compare")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    info = machine()
    info["load_average_start"] = os.getloadavg()
    print(f"machine: {info}")
    rows, agreement = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.backbones:
            rows += bench_backbone(b, args.img_size, args.batch, args.repeats, args.threads, Path(tmp))
        if args.ckpt:
            if not args.images:
                ap.error("--ckpt needs --images <folder>")
            agreement = agreement_on_checkpoint(args.ckpt, args.images, args.agreement_images, args.threads, Path(tmp))
    info["load_average_end"] = os.getloadavg()
    print(to_markdown(rows))
    print(f"load average: {info['load_average_start']} at the start, {info['load_average_end']} at the end")
    if args.json:
        write_json(args.json, {"machine": info, "args": {k: str(v) for k, v in vars(args).items()},
                               "results": rows, "agreement_on_checkpoint": agreement})


if __name__ == "__main__":
    main()
