"""DDP inside a sweep job: the job's extra processes run that one job, in its own run folder.

Lightning starts the extra DDP processes of a job (``trainer.strategy=ddp``, ``trainer.devices=N``) by running
the command line again with ``hydra.run.dir=<hydra.run.dir>``. In a multirun that command line is the whole
sweep (``-m`` and every swept value) and ``hydra.run.dir`` is not the job's folder: each extra process would run
a sweep of its own (with an Optuna search, other trials' parameters, into the same study) and write elsewhere.
``DDPJobProcesses`` makes the command line, for the length of each job, the job itself as a single run: its
overrides and ``hydra.mode=RUN``, with ``hydra.run.dir`` the job's folder. After the job it restores the command
line, closes the job's process group and removes the DDP variables Lightning set, so that the next job starts
its own processes.

Jobs that run outside the launching process (joblib workers, submitit's local processes) cannot start DDP
processes this way: their extra process fails to start and Lightning stops the job (joblib then ends the sweep).
The callback logs why at the job's start (Hydra turns a callback's exception into a warning, so it cannot refuse
the job). Under SLURM run DDP jobs with ``hydra.launcher.tasks_per_node=<devices>``: SLURM starts one task per
GPU, Lightning joins them, and nothing needs changing.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf, read_write

log = logging.getLogger(__name__)
DDP_ENV = ("MASTER_ADDR", "MASTER_PORT", "NODE_RANK", "LOCAL_RANK", "WORLD_SIZE")
BASIC_LAUNCHER = "hydra._internal.core_plugins.basic_launcher.BasicLauncher"
# hydra overrides that belong to the sweep, not to the job as a single run
_SWEEP_ONLY = ("hydra.mode", "hydra.run.dir", "hydra.sweep", "hydra.launcher", "hydra/launcher", "hydra.sweeper",
               "hydra/sweeper", "hydra.output_subdir", "hydra.job.name")


def starts_ddp_processes(config: DictConfig) -> bool:
    """Whether Lightning surely starts extra processes for this job: ddp (or auto) on several devices or nodes."""
    trainer = config.get("trainer") or {}
    strategy, devices = str(trainer.get("strategy", "auto")), trainer.get("devices", 1)
    n_devices = len(devices) if OmegaConf.is_list(devices) else devices
    several = (isinstance(n_devices, int) and n_devices > 1) or int(trainer.get("num_nodes", 1) or 1) > 1
    return several and (strategy == "auto" or (strategy.startswith("ddp") and "spawn" not in strategy))


def job_argv(config: DictConfig) -> list[str]:
    """The job as a single run: Hydra's overrides that still apply, then the job's own, then ``hydra.mode=RUN``."""
    hydra_overrides = [o for o in config.hydra.overrides.hydra if not str(o).lstrip("+~").startswith(_SWEEP_ONLY)]
    return [*map(str, hydra_overrides), *map(str, config.hydra.overrides.task), "hydra.mode=RUN"]


def _processes_started_outside() -> bool:
    """torchrun, or SLURM with several tasks, started the job's processes: Lightning joins them, starts none."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_NTASKS", "1")) > 1


class DDPJobProcesses(Callback):
    """Hydra callback: a multirun job's DDP processes run that job (see the module docstring)."""

    def __init__(self) -> None:
        self._argv: list[str] | None = None
        self._env: dict[str, str | None] = {}

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.hydra.mode != RunMode.MULTIRUN or _processes_started_outside():
            return
        launcher = str(config.hydra.launcher.get("_target_", ""))
        if launcher != BASIC_LAUNCHER:
            if starts_ddp_processes(config):
                log.error("a sweep job that starts its own DDP processes (trainer.strategy=%s, trainer.devices=%s) "
                          "runs only under Hydra's default launcher, not %s: drop hydra/launcher=..., or under "
                          "SLURM set hydra.launcher.tasks_per_node to the number of devices (docs/sweeps.md)",
                          config.trainer.strategy, config.trainer.devices, launcher.rsplit(".", 1)[-1])
            return
        # the job runs in this process: if Lightning starts DDP processes, they must run this job alone
        self._argv, self._env = list(sys.argv), {k: os.environ.get(k) for k in DDP_ENV}
        sys.argv = [sys.argv[0], *job_argv(config)]
        run = HydraConfig.get().run  # Lightning reads hydra.run.dir from here for the new processes
        with read_write(run):
            run.dir = config.hydra.runtime.output_dir

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if self._argv is None:
            return
        sys.argv, self._argv = self._argv, None
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for key, value in self._env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
