"""What every ``python -m medimg.<command>`` entry point shares: where the configs live, and how it runs.

``run_task`` keeps third-party chatter off the console and turns a ``UserError`` (bad config, missing data,
offline weights, a bad checkpoint ...), or a write that failed on a read-only folder or a full disk, into one
logged message and a non-zero exit, without a traceback
(``HYDRA_FULL_ERROR=1`` or ``MEDIMG_DEBUG=1`` keeps it). Inside a sweep (``-m``) the error is raised on, so
that the sweep records the job as failed and goes on with the next one.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from omegaconf import OmegaConf

from medimg.console import quiet_third_party
from medimg.errors import UserError
from medimg.files import WRITE_ERRNOS, write_failure

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
T = TypeVar("T")
log = logging.getLogger("medimg")
_RUN_ID = secrets.token_hex(3)


def run_id() -> str:
    """A short random token, fixed for this process: the suffix that keeps the folders of runs started in
    the same second apart (``${run_id:}`` in conf/hydra/default.yaml)."""
    return _RUN_ID


if not OmegaConf.has_resolver("run_id"):
    OmegaConf.register_new_resolver("run_id", run_id, use_cache=True)  # one value per config, workers too


def debug_enabled() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1" or os.environ.get("MEDIMG_DEBUG") == "1"


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def run_task(task: Callable[..., T], *args, **kwargs) -> T:
    """``task(*args, **kwargs)`` with a quiet console; a UserError becomes one message and exit status 1."""
    quiet_third_party()
    try:
        return task(*args, **kwargs)
    except UserError as e:
        if debug_enabled() or in_multirun():
            raise
        report_error(e)
        sys.exit(1)
    except OSError as e:  # a read-only folder or a full disk under a library's own write (checkpoints, logs)
        if e.errno not in WRITE_ERRNOS or debug_enabled() or in_multirun():
            raise
        report_error(write_failure(e, e.filename or "the run's files", "paths.log_dir=<folder>, or output_dir="))
        sys.exit(1)


def report_error(e: BaseException) -> None:
    """``error: <message>`` on stderr, and the same line in the run's log file (not twice on the console)."""
    print(f"error: {e}", file=sys.stderr, flush=True)
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, "%s", (e,), None)
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)
