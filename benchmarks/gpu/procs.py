"""Time boxes: every step of the GPU check runs as a process with a deadline, and the check as a whole keeps to
its budget, so that one call on a GPU machine always ends in time and still reports what it measured."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any


class Budget:
    """Seconds left of the check's total; ``box(want)`` is what a step may use, keeping ``reserve`` seconds
    for the report at the end."""

    def __init__(self, total_s: float, reserve_s: float = 15.0):
        self.start, self.total_s, self.reserve_s = time.monotonic(), float(total_s), float(reserve_s)

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def left(self) -> float:
        return self.total_s - self.reserve_s - self.elapsed()

    def box(self, want_s: float) -> float:
        return max(0.0, min(float(want_s), self.left()))


def _stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM the process group of ``proc`` (a session of its own), then SIGKILL what is left."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, grace_s)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait_s)
            return
        except subprocess.TimeoutExpired:
            continue


def run_boxed(cmd: Sequence[str], log_path: Path, timeout_s: float, env: dict[str, str] | None = None,
              cwd: Path | None = None, title: str | None = None) -> dict[str, Any]:
    """Run ``cmd`` with its output appended to ``log_path``; stop it (and every process it started) after
    ``timeout_s``. Returns ``rc``, ``wall_s`` and ``timed_out``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    full_env = dict(os.environ if env is None else env, PYTHONUNBUFFERED="1")
    t0 = time.monotonic()
    with open(log_path, "a") as log:
        log.write(f"\n===== {title or ' '.join(map(str, cmd))} (time box {timeout_s:.0f} s)\n")
        log.flush()
        if timeout_s <= 0:
            log.write("not started: no time left in the budget\n")
            return {"rc": None, "wall_s": 0.0, "timed_out": True, "started": False}
        proc = subprocess.Popen([str(c) for c in cmd], stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                cwd=cwd, start_new_session=True)
        timed_out = False
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            timed_out = True
            _stop_group(proc)
            rc = proc.returncode
        wall = time.monotonic() - t0
        log.write(f"===== exit {rc}{' (stopped: time box over)' if timed_out else ''} after {wall:.1f} s\n")
    return {"rc": rc, "wall_s": round(wall, 2), "timed_out": timed_out, "started": True}


def python_cmd(*args: str | Path) -> list[str]:
    """This interpreter with ``args`` (the check's steps run under the Python that runs the check)."""
    return [sys.executable, *(str(a) for a in args)]


def cap_file(path: Path, max_bytes: int) -> None:
    """Keep a log under ``max_bytes``: its first and last halves, with a line saying what was cut."""
    if not path.is_file() or path.stat().st_size <= max_bytes:
        return
    from medimg.files import write_bytes

    data = path.read_bytes()
    half = max_bytes // 2 - 100
    cut = len(data) - 2 * half
    write_bytes(path, data[:half] + f"\n[... {cut} bytes cut ...]\n".encode() + data[-half:])
