"""The machine a benchmark ran on: CPU model and features, cores, memory, library versions.

Shared by the benchmark scripts, so that every table in BENCHMARKS.md names its machine the same way.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path


def _cpuinfo_line(prefix: str) -> str:
    """The value of the first ``/proc/cpuinfo`` line that starts with ``prefix`` ('' when there is none)."""
    try:
        with Path("/proc/cpuinfo").open() as f:
            line = next((ln for ln in f if ln.startswith(prefix)), "")
    except OSError:
        return ""
    return line.split(":", 1)[1].strip() if ":" in line else ""


def cpu_info() -> dict[str, object]:
    """CPU model, cores, bf16 matrix support (AVX512-BF16, AMX) and memory in GiB."""
    flags = _cpuinfo_line("flags").split()
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "cpu": _cpuinfo_line("model name") or platform.processor(),
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "memory_gib": round(memory, 1),
    }


def describe_machine() -> str:
    """One line: ``AMD EPYC, 2 cores, avx512_bf16 yes, 24 GiB; torch 2.x, Python 3.x``."""
    import torch

    info = cpu_info()
    return (
        f"{info['cpu']}, {info['cores']} cores, avx512_bf16 {'yes' if info['avx512_bf16'] else 'no'}, "
        f"{info['memory_gib']:.0f} GiB; torch {torch.__version__}, Python {platform.python_version()}"
    )
