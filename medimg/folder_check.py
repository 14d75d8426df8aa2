"""A Hydra callback that makes sure the run's folder (``hydra.run.dir``, or a sweep's ``hydra.sweep.dir``)
can be created before Hydra creates it: a read-only file system, a full disk or a file in the way is one
``error:`` line naming the folder and the keys that move it, not a traceback from inside Hydra."""

from __future__ import annotations

import sys
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from medimg.errors import WriteError
from medimg.files import writable_folder


class FolderCheck(Callback):
    """``on_run_start`` / ``on_multirun_start``: the folder Hydra is about to create can be created."""

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.run.dir, "hydra.run.dir=<folder> (or paths.log_dir=<folder>)")

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self._check(config.hydra.sweep.dir, "hydra.sweep.dir=<folder> (or paths.root_dir=<folder>)")

    @staticmethod
    def _check(folder: str, keys: str) -> None:
        try:
            writable_folder(folder, keys)
        except WriteError as e:
            from medimg.cli import report_error

            report_error(e)
            sys.exit(1)
