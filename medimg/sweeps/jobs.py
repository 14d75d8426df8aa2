"""What the jobs of a sweep left in their run folders, read back from disk.

Every job folder holds Hydra's ``.hydra/overrides.yaml`` and ``.hydra/hydra.yaml`` from the moment the job
starts; a finished job also holds ``job_status.json`` (written by the sweep summary callback in the job's own
process: ok or failed, the error's first line, the value returned to the sweeper) and, when its run got that
far, ``metrics.json``. Reading the folders instead of the launcher's return values works the same for jobs run
in this process, in joblib workers, or on SLURM nodes.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.utils import JobReturn

from medimg.files import write_json

STATUS_FILE = "job_status.json"
OK, FAILED, INCOMPLETE = "ok", "failed", "incomplete"


@dataclass
class JobRecord:
    """One job of a sweep as its folder shows it."""

    run_dir: Path
    num: int
    overrides: list[str]
    status: str  # ok | failed | incomplete (no status written: still running, killed, or its process died)
    error: str | None = None
    value: float | None = None  # what the job returned to the sweeper
    metrics: dict[str, float] = field(default_factory=dict)
    started: float = 0.0


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def write_job_status(run_dir: Path, job_return: JobReturn, num: int) -> dict[str, Any]:
    """``job_status.json`` in the job's folder from Hydra's record of the finished job."""
    try:
        value, error, status = _as_float(job_return.return_value), None, OK
    except Exception as e:  # noqa: BLE001 -- the job's own error, re-raised by JobReturn.return_value
        value, error, status = None, first_line(e), FAILED
    record = {"status": status, "error": error, "value": value, "job_num": num,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_json(run_dir / STATUS_FILE, record)
    return record


def find_job_dirs(sweep_dir: Path) -> list[Path]:
    """Folders under ``sweep_dir`` that Hydra made for a job (they hold ``.hydra/overrides.yaml``)."""
    found = (p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml"))
    return sorted(p for p in found if p != sweep_dir and ".submitit" not in p.relative_to(sweep_dir).parts)


def read_job(run_dir: Path) -> JobRecord:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = [str(o) for o in yaml.safe_load(overrides_file.read_text()) or []]
    hydra_cfg = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text()) or {}
    num = int(hydra_cfg.get("hydra", {}).get("job", {}).get("num", -1))
    record = JobRecord(run_dir=run_dir, num=num, overrides=overrides, status=INCOMPLETE,
                       started=overrides_file.stat().st_mtime)
    status_file = run_dir / STATUS_FILE
    if status_file.is_file():
        status = json.loads(status_file.read_text())
        record.status, record.error, record.value = status["status"], status.get("error"), status.get("value")
    metrics_file = run_dir / "metrics.json"
    if metrics_file.is_file():
        record.metrics = {k: v for k, v in json.loads(metrics_file.read_text()).items()
                          if "/per_class/" not in k and isinstance(v, int | float)}
    return record


def read_jobs(sweep_dir: Path) -> list[JobRecord]:
    """Every job of the sweep, in the order they started."""
    return sorted((read_job(d) for d in find_job_dirs(sweep_dir)), key=lambda r: (r.started, r.num))


def override_values(overrides: list[str]) -> dict[str, str]:
    """``["a.b=1", "+c=x"]`` -> ``{"a.b": "1", "c": "x"}`` (Hydra's own override parser)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    return {o.key_or_group: o.get_value_element_as_str() for o in parsed if not o.is_delete()}


def swept_parameters(jobs: list[JobRecord]) -> list[str]:
    """The override keys whose values differ between jobs, in the order they first appear."""
    values = [override_values(j.overrides) for j in jobs]
    keys = list(dict.fromkeys(k for v in values for k in v))
    return [k for k in keys if len({v.get(k) for v in values}) > 1]


def metric_value(job: JobRecord, metric: str | None) -> float | None:
    """The job's value of ``metric``: from its metrics.json, else what it returned to the sweeper."""
    if not metric or job.status != OK:
        return None
    value = job.metrics.get(metric, job.value)
    return None if value is None or not math.isfinite(value) else float(value)
