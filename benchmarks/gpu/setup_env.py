"""Installing medimg on a machine whose Python already has torch (and a torch that our pins must not replace).

The packages that Python lacks come as wheels in ``.whl/`` (``make gpu-wheels``); they go into a folder of
their own that ``PYTHONPATH`` puts in front, and medimg is installed ``--no-deps -e`` (or, where that is not
possible, the repository goes on ``PYTHONPATH``). Every later step inherits the environment returned here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from gpu.procs import python_cmd, run_boxed

# import name -> package, for what medimg imports that such a machine may lack
NEEDED = {"hydra": "hydra-core", "omegaconf": "omegaconf", "antlr4": "antlr4-python3-runtime",
          "pytorch_grad_cam": "grad-cam", "ttach": "ttach", "pydicom": "pydicom"}
ENTRY_POINTS = ("medimg.train", "medimg.evaluate", "medimg.predict", "medimg.export", "medimg.explain.__main__")
REPORTED = ("torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "omegaconf", "grad-cam", "numpy",
            "onnx", "onnxruntime", "pillow", "medimg")


def module_origins(env: dict[str, str], names: list[str]) -> dict[str, str | None]:
    """Where the Python of ``env`` finds each module (None: not importable), looked up from ``/`` so that the
    current folder does not count."""
    code = ("import importlib.util, json, sys; specs = {m: importlib.util.find_spec(m) for m in sys.argv[1:]}; "
            "print(json.dumps({m: s and (s.origin or str(list(s.submodule_search_locations or []))) "
            "for m, s in specs.items()}))")
    out = subprocess.run([sys.executable, "-c", code, *names], env=env, capture_output=True, text=True, timeout=60,
                         cwd="/")
    return json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else dict.fromkeys(names)


def missing_modules(env: dict[str, str]) -> list[str]:
    """The NEEDED modules that the Python of ``env`` cannot import."""
    return sorted(m for m, origin in module_origins(env, sorted(NEEDED)).items() if origin is None)


def medimg_installed_from(env: dict[str, str], repo: Path) -> bool:
    """True when the Python of ``env`` imports medimg from ``repo`` wherever it starts."""
    origin = module_origins(env, ["medimg"])["medimg"]
    return origin is not None and str(repo.resolve()) in origin


def _prepend_path(env: dict[str, str], folder: Path) -> None:
    env["PYTHONPATH"] = os.pathsep.join([str(folder), *filter(None, [env.get("PYTHONPATH")])])


def install(repo: Path, wheels: Path, site: Path, log: Path, timeout_s: float) -> tuple[dict[str, str], dict]:
    """Install what is missing; returns the environment for every later step and what was done."""
    env = dict(os.environ)
    info: dict[str, Any] = {"missing_before": missing_modules(env)}
    if info["missing_before"]:
        files = sorted(wheels.glob("*.whl"))
        if not files:
            info["error"] = (f"this Python lacks {info['missing_before']} and {wheels} holds no wheels: run "
                             "`make gpu-wheels` on the development machine and carry .whl")
            return env, info
        r = run_boxed(python_cmd("-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
                                 "--no-cache-dir", "--upgrade", "--find-links", wheels, "--target", site, *files),
                      log, timeout_s / 2, title="pip install the carried wheels")
        info["wheels"] = {"files": [f.name for f in files], **r}
        _prepend_path(env, site)
    if medimg_installed_from(env, repo):
        info["medimg"] = "already installed from this repository"
    else:
        r = run_boxed(python_cmd("-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation", "-e", repo),
                      log, timeout_s / 2, title="pip install --no-deps -e .")
        info["medimg"] = {"pip install --no-deps -e .": r}
        if r["rc"] != 0 or not medimg_installed_from(env, repo):
            _prepend_path(env, repo)
            info["medimg"]["fallback"] = "the repository is on PYTHONPATH"
    info["missing_after"] = missing_modules(env)
    return env, info


def verify(env: dict[str, str], log: Path, timeout_s: float) -> dict[str, Any]:
    """Import every entry point and read the versions and the GPU that the check will use."""
    code = (
        "import importlib, json, platform, torch\n"
        "from importlib.metadata import version, PackageNotFoundError\n"
        f"for m in {ENTRY_POINTS!r}: importlib.import_module(m)\n"
        "def v(n):\n"
        "    try: return version(n)\n"
        "    except PackageNotFoundError: return None\n"
        f"out = {{'python': platform.python_version(), 'versions': {{n: v(n) for n in {REPORTED!r}}}}}\n"
        "if torch.cuda.is_available():\n"
        "    p = torch.cuda.get_device_properties(0)\n"
        "    out['gpu'] = {'name': p.name, 'memory_gib': round(p.total_memory / 2**30, 1),\n"
        "                  'capability': list(torch.cuda.get_device_capability(0)),\n"
        "                  'bf16': torch.cuda.is_bf16_supported(), 'cuda': torch.version.cuda,\n"
        "                  'cudnn': torch.backends.cudnn.version()}\n"
        "print('VERIFY ' + json.dumps(out))\n"
    )
    r = run_boxed([sys.executable, "-c", code], log, timeout_s, env=env, title="import medimg's entry points")
    text = log.read_text()
    found = [ln for ln in text.splitlines() if ln.startswith("VERIFY ")]
    return {**r, **(json.loads(found[-1][7:]) if r["rc"] == 0 and found else {})}
