"""What produced a run: library versions and the git commit, logged with the hyperparameters."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

PACKAGES = ("medimg", "torch", "torchvision", "lightning", "torchmetrics", "hydra-core", "grad-cam", "numpy")


def package_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_commit(where: Path | None = None) -> str:
    """The commit of the source tree (with '+dirty' when it has uncommitted changes), or 'unknown'."""
    where = where or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=where,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_info() -> dict[str, object]:
    return {"versions": package_versions(), "git_commit": git_commit(), "host": platform.node()}
