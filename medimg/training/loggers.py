"""The run's loggers from the ``logger`` config: TensorBoard and CSV files in the run folder, or MLflow.

Each phase (and the final test) gets its own loggers under a version named after it. TensorBoard and CSV write
``<run folder>/<name>/<version>/``. MLflow keeps one MLflow run per medimg run: the first phase creates it
(tagged with the run folder), later phases, the test, a resume of the run and ``medimg.evaluate`` find it by
that tag and log into it; a phase's metrics are named ``<phase>/<metric>`` (``head/val/auroc``), the test
metrics keep their own names (``test/auroc``). MLflow 3 keeps its ``file:`` store in maintenance mode and refuses
it unless ``MLFLOW_ALLOW_FILE_STORE`` is set: a ``file:`` tracking URI in the config opts in (unless that variable
is already set); ``sqlite:///<file>`` (a database store) and ``http(s)://`` (a tracking server) need no opt-in.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only

from medimg.errors import ConfigError

RUN_DIR_TAG = "medimg.run_dir"
log = logging.getLogger(__name__)


def free_version(folder: Path, version: str) -> str:
    """``version``, or ``version-1``, ``-2`` ... when a log folder of that name already holds files (a resumed
    run): loggers never delete an earlier session's logs (Lightning's CSV logger would)."""
    candidate, k = version, 0
    while (folder / candidate).is_dir() and any((folder / candidate).iterdir()):
        k += 1
        candidate = f"{version}-{k}"
    return candidate


def build_loggers(logger_cfg: dict[str, Any] | None, run_dir: Path, version: str) -> list[Logger]:
    """One logger per entry of the ``logger`` config; each phase (and test) logs under its own version."""
    loggers: list[Logger] = []
    for kind, kw in (logger_cfg or {}).items():
        kw = {k: v for k, v in (kw or {}).items() if k not in ("save_dir", "version")}
        if kind == "tensorboard":
            free = free_version(run_dir / kw.get("name", kind), version)
            loggers.append(TensorBoardLogger(save_dir=str(run_dir), version=free, **kw))
        elif kind == "csv":
            free = free_version(run_dir / kw.get("name", kind), version)
            loggers.append(CSVLogger(save_dir=str(run_dir), version=free, **kw))
        elif kind == "mlflow":
            loggers.append(RunMLFlowLogger(run_dir=run_dir, phase=version, **kw))
        else:
            raise ConfigError(f"unknown logger {kind!r}; choose tensorboard, csv or mlflow (logger=<name>)")
    return loggers


def prepare_mlflow_store(tracking_uri: str) -> None:
    """A local store's folder exists; a ``file:`` store is allowed (see the module docstring)."""
    if tracking_uri.startswith("file:"):
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        Path(tracking_uri.removeprefix("file:").removeprefix("//")).mkdir(parents=True, exist_ok=True)
    elif tracking_uri.startswith("sqlite:///"):
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def find_mlflow_run(tracking_uri: str, experiment_name: str, run_dir: Path) -> str | None:
    """The id of the MLflow run that logs ``run_dir`` (tagged ``medimg.run_dir``), or None."""
    from mlflow.tracking import MlflowClient

    prepare_mlflow_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(experiment_name)
    folder = str(run_dir.resolve())
    if experiment is None or experiment.lifecycle_stage == "deleted" or "'" in folder:
        return None
    runs = client.search_runs([experiment.experiment_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{folder}'",
                              max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


class RunMLFlowLogger(MLFlowLogger):
    """Lightning's MLFlowLogger, one MLflow run per run folder, with metrics named by phase."""

    def __init__(self, run_dir: Path, phase: str, experiment_name: str, tracking_uri: str,
                 tags: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        run_id = find_mlflow_run(tracking_uri, experiment_name, run_dir)
        tags = {**(tags or {}), RUN_DIR_TAG: str(run_dir.resolve())}
        super().__init__(experiment_name=experiment_name, tracking_uri=tracking_uri, tags=tags, run_id=run_id,
                         **kwargs)
        self._phase = phase

    def _phase_key(self, key: str) -> str:
        return key if key.startswith(f"{self._phase}/") else f"{self._phase}/{key}"

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        super().log_metrics({self._phase_key(k): v for k, v in metrics.items()}, step)

    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        """Params named with dots (``stage.name``: MLflow's file store cannot hold both ``backbone`` and
        ``backbone/name``). MLflow params cannot change: keys the run already has keep their first value (a
        resume with changed settings logs a warning instead of failing)."""
        from lightning.fabric.utilities.logger import _convert_params, _flatten_dict

        flat = {k.replace("/", "."): v for k, v in _flatten_dict(_convert_params(params), delimiter=".").items()}
        known = self.experiment.get_run(self.run_id).data.params
        changed = sorted(k for k, v in flat.items() if k in known and known[k] != str(v)[:250])
        if changed:
            log.warning("MLflow run %s keeps the first value of %s", self.run_id, ", ".join(changed[:10]))
        new = {k: v for k, v in flat.items() if k not in known}
        if new:
            super().log_hyperparams(new)
