"""The sweep summary: ``summary.csv`` and ``summary.png`` in the sweep folder, for every multirun.

A Hydra callback (on through ``conf/hydra/sweep_callbacks.yaml``). When a job ends, in the job's own process,
it writes ``job_status.json`` into the job's folder (ok, or failed with the error's first line) and rewrites the
summary from what every job folder holds, so the summary is current while the sweep runs, after a failed job
ends a Hydra sweep, and after an interrupted one. When the sweep ends it writes the summary once more.

``summary.csv`` has one row per job, in the order they started: ``job`` (Hydra's job number), ``status`` (ok,
failed, incomplete), the optimised metric, ``best`` (true for the best ok job by that metric and direction),
one column per swept parameter (the overrides that differ between jobs), ``error``, ``run_dir``, all
``overrides``, and the job's other test metrics from its ``metrics.json`` (per-class metrics stay there).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from medimg.errors import ConfigError
from medimg.files import file_lock, save_figure, write_csv
from medimg.sweeps.jobs import (
    JobRecord,
    metric_value,
    override_values,
    read_jobs,
    swept_parameters,
    write_job_status,
)

if TYPE_CHECKING:
    import pandas as pd

SUMMARY_CSV, SUMMARY_PNG = "summary.csv", "summary.png"
DIRECTIONS = ("maximize", "minimize")
log = logging.getLogger(__name__)


def summary_frame(jobs: list[JobRecord], metric: str | None, direction: str) -> tuple[pd.DataFrame, list[str]]:
    """The summary table of ``jobs`` and the swept parameters (its parameter columns)."""
    import pandas as pd

    params = swept_parameters(jobs)
    metric_col = metric or "value"
    rows = []
    for job in jobs:
        values = override_values(job.overrides)
        row: dict[str, Any] = {"job": job.num, "status": job.status, metric_col: metric_value(job, metric),
                               "best": False}
        row.update({p: values.get(p) for p in params})
        row.update(error=job.error, run_dir=str(job.run_dir), overrides=" ".join(job.overrides))
        row.update({k: v for k, v in sorted(job.metrics.items()) if k != metric_col})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=None if rows else ["job", "status", metric_col, "best", "error", "run_dir"])
    scores = pd.to_numeric(frame[metric_col], errors="coerce")
    if scores.notna().any():
        frame.loc[scores.idxmax() if direction == "maximize" else scores.idxmin(), "best"] = True
    return frame, params


def write_summary(sweep_dir: Path, metric: str | None, direction: str,
                  log_params: set[str] = frozenset()) -> pd.DataFrame:
    """Read every job folder of ``sweep_dir``; write summary.csv and summary.png there (one writer at a time)."""
    # matplotlib only once a summary is written, not when every entry point starts
    from medimg.sweeps.plot import sweep_figure

    with file_lock(sweep_dir / ".summary"):
        frame, params = summary_frame(read_jobs(sweep_dir), metric, direction)
        write_csv(sweep_dir / SUMMARY_CSV, frame)
        if len(frame):
            fig = sweep_figure(frame, params, metric or "value", log_params)
            save_figure(fig, sweep_dir / SUMMARY_PNG, dpi=100)
    return frame


def log_scale_params(config: DictConfig) -> set[str]:
    """The parameters an Optuna search draws on a log scale (``tag(log, ...)`` in hydra.sweeper.params)."""
    params = OmegaConf.select(config, "hydra.sweeper.params") or {}
    return {str(k) for k, v in params.items() if "log" in str(v)}


def _direction(direction: Any) -> str:
    name = str(getattr(direction, "name", direction)).lower()  # Optuna's config holds an enum
    if name not in DIRECTIONS:
        raise ConfigError(f"hydra.callbacks.sweep_summary.direction={direction!r}: choose maximize or minimize")
    return name


def _is_rank_zero() -> bool:
    """False in the extra processes of a job that runs DDP under SLURM (each SLURM task runs the job)."""
    return int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0"))) == 0


class SweepSummary(Callback):
    """Hydra callback: job status files and the sweep summary (see the module docstring)."""

    def __init__(self, metric: str | None, direction: Any) -> None:
        self.metric = metric
        self.direction = _direction(direction)

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # the sweep folder exists before the sweeper starts: an Optuna study's SQLite file lives there
        Path(config.hydra.sweep.dir).mkdir(parents=True, exist_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or not _is_rank_zero():
            return
        record = write_job_status(Path(config.hydra.runtime.output_dir), job_return, int(config.hydra.job.num))
        if record["status"] != "ok":
            log.error("job %s failed: %s (recorded in %s)", config.hydra.job.num, record["error"],
                      Path(config.hydra.sweep.dir) / SUMMARY_CSV)
        self._write(config)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        frame = self._write(config)
        if frame is not None and len(frame):
            best = frame[frame["best"]]
            where = f"; best: job {best['job'].iloc[0]} ({best['run_dir'].iloc[0]})" if len(best) else ""
            log.info("sweep summary: %s (%d ok, %d failed%s)", Path(config.hydra.sweep.dir) / SUMMARY_CSV,
                     int(frame["status"].eq("ok").sum()), int(frame["status"].eq("failed").sum()), where)

    def _write(self, config: DictConfig) -> pd.DataFrame | None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            return write_summary(sweep_dir, self.metric, self.direction, log_scale_params(config))
        except Exception:  # noqa: BLE001 -- a broken summary must not stop the sweep
            log.exception("could not write the sweep summary in %s", sweep_dir)
            return None
