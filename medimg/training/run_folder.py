"""One run, one folder: a run never writes into another run's folder, and a resume continues in its own.

``claim`` marks a fresh run's folder as its own (``run.json``, created exclusively) and refuses a folder that
holds another run's checkpoints or results. ``resume_argv`` makes ``python -m medimg.train
ckpt_path=<run>/checkpoints/last.ckpt`` compose the run's own ``.hydra/config.yaml`` (not today's defaults) in
the run's own folder, with the command line's overrides on top; ``refuse_finished_run_dir`` stops an explicit
``hydra.run.dir`` that points at a finished run before Hydra writes anything there.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from medimg.config.overrides import check_overrides
from medimg.errors import ConfigError
from medimg.files import remove_stale_temporaries, write_json
from medimg.inference import run_dir_of

RESULTS = ("metrics.json", "predictions.csv", "report.md")
CLAIM = "run.json"
GROUPS = ("dataset", "backbone", "stage", "optim", "model", "trainer", "logger", "callbacks", "calibration",
          "experiment", "debug", "paths", "hydra")


def occupied_by(run_dir: Path) -> list[str]:
    """What in ``run_dir`` shows another run was there: checkpoints and results."""
    found = [p.name for p in (run_dir / "checkpoints").glob("*.ckpt")] if (run_dir / "checkpoints").is_dir() else []
    return found + [name for name in RESULTS if (run_dir / name).is_file()]


def _is_launched_rank() -> bool:
    """A process started by a launcher (Lightning's DDP, torchrun, SLURM): its rank 0 did the checks."""
    return "LOCAL_RANK" in os.environ or int(os.environ.get("SLURM_PROCID", "0")) > 0


def claim(run_dir: Path, resuming: bool) -> None:
    """Make ``run_dir`` this run's: refused if another run's files are there (unless resuming this run)."""
    if _is_launched_rank() and int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) != 0:
        return
    run_dir.mkdir(parents=True, exist_ok=True)
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    if resuming:  # the run is this process's again: what a kill left half-written goes
        remove_stale_temporaries(run_dir)
        write_json(run_dir / CLAIM, {**me, "resumed": True})
        return
    taken = occupied_by(run_dir)
    if taken:
        raise ConfigError(f"run folder {run_dir} already holds another run's files ({', '.join(sorted(taken)[:5])}); "
                          f"a run never writes into another run's folder. Resume that run with "
                          f"ckpt_path={run_dir / 'checkpoints' / 'last.ckpt'}, or choose another hydra.run.dir.")
    try:
        fd = os.open(run_dir / CLAIM, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)  # umask applies
    except FileExistsError:
        other = (run_dir / CLAIM).read_text().strip()
        raise ConfigError(f"run folder {run_dir} belongs to another run ({other}); choose another hydra.run.dir "
                          f"or resume that run with ckpt_path=<its checkpoints/last.ckpt>") from None
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(me) + "\n")


def _value(argv: list[str], key: str) -> str | None:
    for a in argv:
        if a.startswith(key + "="):
            return a.split("=", 1)[1]
    return None


def refuse_finished_run_dir(argv: list[str]) -> None:
    run_dir = _value(argv, "hydra.run.dir")
    if run_dir and not _value(argv, "ckpt_path") and not _is_launched_rank():
        taken = occupied_by(Path(run_dir))
        if taken:
            raise ConfigError(f"hydra.run.dir={run_dir} holds a finished or running run ({', '.join(sorted(taken)[:5])}); "
                              f"resume it with ckpt_path={Path(run_dir) / 'checkpoints' / 'last.ckpt'}, or choose "
                              "another folder")


def resume_argv(argv: list[str]) -> list[str]:
    """``[prog, ckpt_path=..., overrides...]`` -> the same run composed from its own saved config."""
    args = argv[1:]
    ckpt = _value(args, "ckpt_path")
    if not ckpt or any(a in ("-cp", "-cn", "--config-path", "--config-name") or a.startswith("--config")
                       for a in args) or _is_launched_rank():
        return argv
    run_dir = run_dir_of(ckpt)
    saved = run_dir / ".hydra" / "config.yaml"
    if not saved.is_file():
        return argv  # not a run folder of the command line: the checkpoint's stored settings are checked instead
    groups = [a for a in args if "=" in a and a.split("=", 1)[0].lstrip("+~") in GROUPS]
    if groups:
        raise ConfigError(f"resuming continues the run's own config; {', '.join(groups)} would change it. Drop "
                          "them to resume, or start a new run with them.")
    flags, overrides = split_flags(args)
    check_resume(saved, overrides, run_dir)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    extra = [f"hydra.run.dir={run_dir}", f"hydra.output_subdir=.hydra/resume-{stamp}",
             f"hydra.job_logging.handlers.file.filename={run_log(run_dir, saved)}", "hydra.job.chdir=false"]
    return [argv[0], *flags, "-cp", str(saved.parent), "-cn", "config", *overrides, *extra]


FLAGS_WITH_VALUES = ("--cfg", "-c", "--package", "-p", "--info", "-i")


def split_flags(args: list[str]) -> tuple[list[str], list[str]]:
    """Hydra's flags (with the value that follows ``--cfg job`` and the like) apart from the overrides."""
    flags, overrides, i = [], [], 0
    while i < len(args):
        a = args[i]
        if a.startswith("-"):
            takes_value = a in FLAGS_WITH_VALUES and i + 1 < len(args) and "=" not in args[i + 1]
            flags += args[i:i + 2] if takes_value else [a]
            i += 2 if takes_value else 1
        else:
            overrides.append(a)
            i += 1
    return flags, overrides


def check_resume(saved: Path, overrides: list[str], run_dir: Path) -> None:
    """Compose the run's saved config with ``overrides`` and check them against the checkpoint, before Hydra
    writes anything into the run folder: a refused resume leaves the run exactly as it was."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from medimg.config.schema import as_dict
    from medimg.config.training import train_settings
    from medimg.training.resume import open_resume

    with initialize_config_dir(config_dir=str(saved.parent), version_base="1.3"):
        cfg = compose(config_name="config", overrides=[*overrides, f"paths.output_dir={run_dir}"])
    s = train_settings(OmegaConf.to_container(cfg, resolve=True))
    open_resume(s.ckpt_path, as_dict(s), list(s.stage.phases), quiet=True)


def run_log(run_dir: Path, saved: Path) -> Path:
    """The run's log, which a resume continues: ``train.log``, or ``<task_name>.log`` of a run that has only that
    (the name before the log was ``train.log`` for every run)."""
    older = run_dir / f"{_saved_task_name(saved)}.log"
    return older if older.is_file() and not (run_dir / "train.log").is_file() else run_dir / "train.log"


def _saved_task_name(saved: Path) -> str:
    for line in saved.read_text().splitlines():
        if line.startswith("task_name:"):
            return line.split(":", 1)[1].strip().strip("'\"") or "train"
    return "train"


def prepare_argv(argv: list[str]) -> list[str]:
    """The train command line, checked and (for a resume) rewritten before Hydra writes anything."""
    try:
        check_overrides("train", argv[1:])  # an unknown key, before Hydra's advice to add it with +
        refuse_finished_run_dir(argv[1:])
        return resume_argv(argv)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1) from None
