"""How a DataLoader's worker processes start.

A plain run uses Python's default start method. Inside a joblib worker (``hydra/launcher=joblib`` or
``parallel``) that default is loky's own, which cannot start DataLoader workers ("Got pickle error when
attempting to start a worker Process"): there the workers are forked where the platform can (as in a plain
run on Linux), else spawned.
"""

from __future__ import annotations

import multiprocessing

STANDARD = ("fork", "spawn", "forkserver")


def worker_context(workers: int) -> str | None:
    """The ``multiprocessing_context`` for a loader with ``workers`` processes (None = Python's default)."""
    if workers == 0 or multiprocessing.get_start_method(allow_none=True) in (None, *STANDARD):
        return None
    return "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
