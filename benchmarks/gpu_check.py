"""The GPU check: prove medimg's GPU path and measure its speed on a CUDA machine, in one time-boxed call.

    python benchmarks/gpu_check.py               # on a CUDA machine (make gpu-check); off a GPU: says so, exit 0
    python benchmarks/gpu_check.py --cpu-smoke   # every step at tiny size on the CPU (proves the steps work)

In order, each step in its own time box, the whole within ``--budget-s``:

0. setup: the wheels in ``.whl/`` (``make gpu-wheels``) for what this Python lacks, medimg ``--no-deps -e``;
   every entry point imported, versions and the GPU read;
1. the GPU tests: ``pytest -m gpu tests/test_gpu.py`` with a per-test timeout;
2. throughput (``gpu/throughput.py``): medimg's CLI with the step timer against the bare train step,
   ResNet18 and ResNet50, full fine-tune and head, at 224 px; the loader alone on every core; GPU
   utilisation sampled by nvidia-smi during the fits.

Everything goes under ``$OUT`` (else ``benchmarks/.data/gpu_check/<time>/``), at most 6 files:
``gpu_check.json`` (all results, rewritten after every step), ``gpu_check.txt`` (the closing table, printed
last), ``setup.log``, ``pytest.log``, ``throughput.log``, ``nvidia_smi.csv``. Scratch data and run folders go
to ``--work``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "benchmarks"), str(REPO)]

from gpu.procs import Budget, cap_file  # noqa: E402  (the paths above first)

# sizes per mode: (GPU, --cpu-smoke)
GPU = {"img_size": 224, "batch": 256, "n_train": 24576, "unique": 1024, "head_epochs": 5, "bare_steps": 30,
       "budget_s": 450, "tests_s": 200, "per_test_s": 150, "box_scale": 1.0}
SMOKE = {"img_size": 64, "batch": 8, "n_train": 64, "unique": 14, "head_epochs": 2, "bare_steps": 3,
         "budget_s": 2400, "tests_s": 1500, "per_test_s": 1200, "box_scale": 4.0, "workers": 2}
BOXES = {"setup": 90, "data": 60, "loader": 90, "medimg": 90, "bare": 60, "options": 90}  # seconds, x box_scale
MAX_LOG_BYTES = 15 * 2**20  # under the 16 MiB a returned file may have


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu-smoke", action="store_true", help="run every step at tiny size on the CPU")
    ap.add_argument("--budget-s", type=float, help="seconds for the whole check (GPU 450, smoke 2400)")
    ap.add_argument("--batch-size", type=int, help="training batch (GPU 256)")
    ap.add_argument("--train-images", type=int, help="training images of the throughput set (GPU 24576)")
    ap.add_argument("--workers", type=int, help="loader workers of medimg's runs (default: cores - 2)")
    ap.add_argument("--skip-tests", action="store_true", help="throughput only")
    ap.add_argument("--skip-throughput", action="store_true", help="setup and tests only")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "medimg-gpu-check",
                    help="scratch folder: data, run folders, installed wheels")
    return ap.parse_args()


def out_dir() -> Path:
    if os.environ.get("OUT"):
        return Path(os.environ["OUT"])
    return REPO / "benchmarks" / ".data" / "gpu_check" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def cuda_state() -> tuple[bool, str, str | None]:
    """(CUDA usable, the device or why not, torch's version)."""
    try:
        import torch
    except ImportError as e:
        return False, f"torch is not importable with {sys.executable}: {e}", None
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} sees no CUDA device", torch.__version__
    return True, torch.cuda.get_device_name(0), torch.__version__


def sizes(args: argparse.Namespace) -> dict[str, Any]:
    s = dict(SMOKE if args.cpu_smoke else GPU)
    s.setdefault("workers", max(1, (os.cpu_count() or 1) - 2))
    for key, value in (("budget_s", args.budget_s), ("batch", args.batch_size), ("n_train", args.train_images),
                       ("workers", args.workers)):
        if value is not None:
            s[key] = value
    return s


def setup_step(summary: dict[str, Any], out: Path, work: Path, budget: Budget, box: float) -> dict[str, str]:
    from gpu.setup_env import install, verify

    log = out / "setup.log"
    env, info = install(REPO, REPO / ".whl", work / "site", log, budget.box(box * 0.7))
    info.update(verify(env, log, budget.box(box * 0.3)))
    summary["setup"] = info
    return env


def tests_step(summary: dict[str, Any], out: Path, work: Path, env: dict[str, str], budget: Budget,
               s: dict[str, Any], smoke: bool) -> None:
    from gpu.pytest_step import run_gpu_tests

    env = dict(env, MEDIMG_GPU_TEST_DEVICE="cpu" if smoke else "cuda")
    summary["tests"] = run_gpu_tests(REPO, env, out / "pytest.log", work / "pytest.xml",
                                     budget.box(s["tests_s"]), s["per_test_s"])


def throughput_step(summary: dict[str, Any], out: Path, work: Path, env: dict[str, str], budget: Budget,
                    s: dict[str, Any], cuda: bool) -> None:
    from gpu.throughput import Ctx, measure_all

    ctx = Ctx(repo=REPO, work=work, log=out / "throughput.log", env=env, budget=budget, cuda=cuda,
              img_size=s["img_size"], batch=s["batch"], workers=s["workers"], head_epochs=s["head_epochs"],
              n_train=s["n_train"], bare_steps=s["bare_steps"])
    want = {k: v * s["box_scale"] for k, v in BOXES.items()}

    def save(results: dict[str, Any]) -> None:  # partial results survive a stop at the command's limit
        from medimg.files import write_json

        write_json(out / "gpu_check.json", {**summary, "throughput": results})

    ctx.save = save
    try:
        summary["throughput"] = measure_all(ctx, s["unique"], want)
    finally:
        if ctx.sampler.samples:
            ctx.sampler.write_csv(out / "nvidia_smi.csv")


def finish(summary: dict[str, Any], out: Path, budget: Budget) -> str:
    from gpu.report import render

    from medimg.files import write_json, write_text

    summary["elapsed_s"] = round(budget.elapsed(), 1)
    for name in ("setup.log", "pytest.log", "throughput.log"):
        cap_file(out / name, MAX_LOG_BYTES)
    write_json(out / "gpu_check.json", summary)
    text = render(summary)
    write_text(out / "gpu_check.txt", text + "\n")
    return text


def say_no_gpu(why: str) -> int:
    """Off a GPU: say so, leave the reason in $OUT (when set) and succeed."""
    print(f"no CUDA GPU here ({why}): nothing to check. The GPU check runs on a CUDA machine "
          "(make gpu-check); --cpu-smoke runs its steps at tiny size on the CPU.")
    if os.environ.get("OUT"):
        result = {"cuda": False, "reason": why}
        try:
            from medimg.files import write_json
        except ImportError:  # a Python without medimg's dependencies (not even torch, say)
            (out_dir() / "gpu_check.json").write_text(json.dumps(result) + "\n")
        else:
            write_json(out_dir() / "gpu_check.json", result)
    return 0


def main() -> int:
    args = parse_args()
    cuda, why, torch_version = cuda_state()
    if not cuda and not args.cpu_smoke:
        return say_no_gpu(why)
    from medimg.files import write_json

    s, out = sizes(args), out_dir()
    out.mkdir(parents=True, exist_ok=True)
    args.work.mkdir(parents=True, exist_ok=True)
    budget = Budget(s["budget_s"])
    summary: dict[str, Any] = {"cuda": cuda, "device": why, "torch": torch_version,
                               "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
                               "budget_s": s["budget_s"], "sizes": s, "started": dt.datetime.now().isoformat(),
                               "steps": {}}
    print(f"GPU check ({summary['mode']}, {why}); results in {out}", flush=True)
    env = setup_step(summary, out, args.work, budget, BOXES["setup"] * s["box_scale"])
    summary["steps"]["setup"] = round(budget.elapsed(), 1)
    write_json(out / "gpu_check.json", summary)
    if not args.skip_tests:
        tests_step(summary, out, args.work, env, budget, s, args.cpu_smoke)
        summary["steps"]["tests"] = round(budget.elapsed(), 1)
        write_json(out / "gpu_check.json", summary)
        print(f"tests done at {budget.elapsed():.0f} s", flush=True)
    if not args.skip_throughput:
        throughput_step(summary, out, args.work, env, budget, s, cuda)
        summary["steps"]["throughput"] = round(budget.elapsed(), 1)
    print(finish(summary, out, budget), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
