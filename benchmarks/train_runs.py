"""Real ``python -m medimg.train`` processes for the quality benchmarks (recipe ablation, distillation), and the
mean ± standard deviation cell of their tables."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def medimg_train(args: list[str], run_dir: Path, data_dir: Path, multirun: bool = False) -> float:
    """One real training process (or a multirun into ``run_dir``); returns its wall time in seconds."""
    where = f"hydra.sweep.dir={run_dir}" if multirun else f"hydra.run.dir={run_dir}"
    cmd = [sys.executable, "-m", "medimg.train", *(["-m"] if multirun else []), *args,
           f"paths.data_dir={data_dir}", f"paths.root_dir={run_dir.parent}", where]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg"}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return time.perf_counter() - t0


def mean_sd(values: list[float], digits: int = 3) -> str:
    """``mean ± sd`` over seeds (the value alone for one)."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"
