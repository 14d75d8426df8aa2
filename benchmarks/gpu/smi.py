"""GPU utilisation sampled in the background with ``nvidia-smi`` (every 200 ms) while the check trains.

Each sample carries nvidia-smi's own timestamp (a pipe may hold its lines back, so the time a line is read is
not the time it was measured); a training run's steady-state window is cut out of the samples by time.
``utilization.gpu`` is the share of the last sample period in which at least one kernel ran.
"""

from __future__ import annotations

import datetime as dt
import shutil
import statistics
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SMI_CMD = ["nvidia-smi", "--query-gpu=timestamp,utilization.gpu,memory.used", "--format=csv,noheader,nounits",
           "-lms", "200"]
TIME_FORMAT = "%Y/%m/%d %H:%M:%S.%f"


def parse_line(line: str, read_at: float) -> tuple[float, float, float] | None:
    """``(unix time, utilisation %, memory MiB)`` of one CSV line (``timestamp, util, mem`` or ``util, mem``;
    units and a header are tolerated); None for a header or an unreadable line."""
    parts = [p.strip().removesuffix("%").removesuffix("MiB").strip() for p in line.split(",")]
    when = read_at
    if len(parts) == 3:
        try:
            when = dt.datetime.strptime(parts[0], TIME_FORMAT).timestamp()
        except ValueError:
            return None
        parts = parts[1:]
    if len(parts) != 2:
        return None
    try:
        return when, float(parts[0]), float(parts[1])
    except ValueError:
        return None


def summarise(samples: Sequence[tuple[float, float, float]]) -> dict[str, Any]:
    """Median, 10th percentile and mean utilisation and the peak memory of ``samples``."""
    util = [s[1] for s in samples]
    if not util:
        return {"n": 0}
    deciles = statistics.quantiles(util, n=10, method="inclusive") if len(util) > 1 else [util[0]] * 9
    return {"n": len(util), "median": statistics.median(util), "p10": deciles[0],
            "mean": round(statistics.fmean(util), 1), "memory_max_mib": max(s[2] for s in samples)}


class UtilSampler:
    """``nvidia-smi`` in the background; ``window(t0, t1)`` gives the samples taken between two unix times."""

    def __init__(self, cmd: Sequence[str] = SMI_CMD):
        self.cmd = list(cmd)
        self.samples: list[tuple[float, float, float]] = []
        self.error: str | None = None
        self._proc: subprocess.Popen | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        if shutil.which(self.cmd[0]) is None:
            self.error = f"{self.cmd[0]} not found"
            return False
        self._proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                      bufsize=1)
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()
        return True

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            sample = parse_line(line, time.time())
            if sample is not None:
                self.samples.append(sample)

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if not self.samples and self.error is None:
            self.error = f"{self.cmd[0]} gave no samples (exit {self._proc.returncode})"

    def window(self, t0: float, t1: float) -> list[tuple[float, float, float]]:
        return [s for s in self.samples if t0 <= s[0] <= t1]

    def write_csv(self, path: Path) -> None:
        from medimg.files import write_text

        rows = [f"{t:.3f},{u:.0f},{m:.0f}" for t, u, m in self.samples]
        write_text(path, "\n".join(["unix_time,utilization_gpu_pct,memory_used_mib", *rows]) + "\n")
