"""Measuring one process from the outside: wall time, peak memory, and how busy the rest of the machine was.

Peak memory: ``rss_mib`` is the process's ru_maxrss; ``pss_mib`` is the peak of the summed proportional set
size of the process and its descendants (loader workers; shared pages counted once), sampled every
``PSS_EVERY_S``. ``others`` is the share of the machine's CPU that other processes used meanwhile
(0 = a quiet machine). Linux only (``/proc``).
"""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path
from typing import Any

from . import REPO

PSS_EVERY_S = 3.0  # reading smaps costs ~10 ms per GiB: not too often


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (from /proc/*/stat)."""
    parent: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
                parent[int(d.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
            except (OSError, ValueError):
                continue
    pids, frontier = [root], [root]
    while frontier:
        frontier = [p for p, pp in parent.items() if pp in frontier]
        pids += frontier
    return pids


def pss_kib(pid: int) -> int:
    """Proportional set size of ``pid`` in KiB (0 when it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has been busy (all cores, /proc/stat)."""
    user, nice, system, _idle, _iowait, irq, softirq, steal = Path("/proc/stat").read_text().split()[1:9]
    return sum(int(v) for v in (user, nice, system, irq, softirq, steal)) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    return sum(os.times()[:2])


def _wait_sampling_pss(proc: subprocess.Popen) -> tuple[int, resource.struct_rusage, int]:
    """Wait for ``proc``; its wait status, resource usage and the peak PSS (KiB) of its process tree."""
    peak_pss, next_sample = 0, time.perf_counter() + 1.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return status, usage, peak_pss
        if time.perf_counter() >= next_sample:
            peak_pss = max(peak_pss, sum(pss_kib(p) for p in process_tree(proc.pid)))
            next_sample = time.perf_counter() + PSS_EVERY_S
        time.sleep(0.2)


def measure_process(cmd: list[str], log_path: Path) -> dict[str, Any]:
    """Run ``cmd`` (in the repository, output to ``log_path``) to completion: its exit code ``rc``,
    ``wall_s``, ``rss_mib``, ``pss_mib`` and ``others`` (see the module's docstring)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    busy0, own0 = busy_cpu_s(), _own_cpu_s()
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
        status, usage, peak_pss = _wait_sampling_pss(proc)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    others = busy_cpu_s() - busy0 - (usage.ru_utime + usage.ru_stime) - (_own_cpu_s() - own0)
    return {
        "rc": proc.returncode,
        "wall_s": wall,
        "others": max(0.0, others) / (wall * (os.cpu_count() or 1)),
        "rss_mib": usage.ru_maxrss / 1024,
        "pss_mib": peak_pss / 1024,
    }


def others_busy(seconds: float = 5.0) -> float:
    """Share of the machine's CPU that other processes use over the next ``seconds``."""
    busy0, own0 = busy_cpu_s(), _own_cpu_s()
    time.sleep(seconds)
    others = busy_cpu_s() - busy0 - (_own_cpu_s() - own0)
    return max(0.0, others) / (seconds * (os.cpu_count() or 1))


def wait_quiet(limit_s: float, threshold: float = 0.05) -> None:
    """Wait (up to ``limit_s``) until other processes use less than ``threshold`` of the CPU."""
    t0 = time.time()
    while time.time() - t0 < limit_s and others_busy() >= threshold:
        pass
