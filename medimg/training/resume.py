"""Resuming a run from one of its checkpoints: where to continue, and which settings may change.

``last.ckpt`` is written at the end of every epoch (mid-phase: Lightning restores weights, optimiser,
scheduler, early-stopping and loop state, and the interrupted epoch restarts) and at every phase boundary (the
best weights of the phase that ended: the next phase starts from them). A resume may change how the run
executes (devices, precision, loaders, logging, epochs and patience of phases not finished yet) but not what
it computes: the model, the data, the seed, finished phases.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medimg.config.schema import flatten
from medimg.errors import ConfigError
from medimg.inference import medimg_state

log = logging.getLogger("medimg.train")

# settings a resume may change (dotted prefixes); stage.phases.<unfinished>.{epochs,patience} are checked apart
MAY_CHANGE = ("ckpt_path", "task_name", "test", "optimized_metric", "paths.", "trainer.", "logger", "callbacks.",
              "calibration.", "evaluation.", "dataset.num_workers", "dataset.eval_batch_size", "dataset.pin_memory",
              "dataset.cache", "dataset.scan_files")


@dataclass(frozen=True)
class Resume:
    path: Path
    state: dict[str, Any]        # the checkpoint's medimg entry
    start: int                   # index of the phase to run first
    mid_phase: bool              # True: continue that phase from the checkpoint; False: start it afresh

    @property
    def phases_done(self) -> dict[str, dict[str, Any]]:
        return dict(self.state.get("phases_done") or {})


def _may_change(key: str, unfinished: set[str]) -> bool:
    if any(key == p or key.startswith(p) for p in MAY_CHANGE):
        return True
    parts = key.split(".")
    return len(parts) == 4 and parts[:2] == ["stage", "phases"] and parts[2] in unfinished \
        and parts[3] in ("epochs", "patience")


def changed_settings(saved: dict[str, Any], now: dict[str, Any], unfinished: set[str]) -> list[str]:
    """``key: saved -> now`` for every setting that differs and may not change on a resume."""
    a, b = flatten(saved), flatten(now)
    keys = sorted(set(a) | set(b))
    return [f"{k}: {a.get(k, '<unset>')!r} -> {b.get(k, '<unset>')!r}" for k in keys
            if a.get(k) != b.get(k) and not _may_change(k, unfinished)]


def changed_allowed(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """The settings a resume changes that it may change (logged with the resume)."""
    a, b = flatten(saved), flatten(now)
    return [f"{k}={b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)
            and k not in ("ckpt_path", "paths.output_dir")]


def open_resume(ckpt_path: str, settings: dict[str, Any], phase_names: list[str], quiet: bool = False) -> Resume:
    """Check that ``ckpt_path`` can continue the run described by ``settings``; where to start."""
    state = medimg_state(ckpt_path)
    phase = state["phase"]["name"]
    if phase not in phase_names:
        raise ConfigError(f"checkpoint {ckpt_path} is from phase {phase!r}, which this stage does not have "
                          f"(phases: {phase_names}); resume with the run's own stage")
    i = phase_names.index(phase)
    completed = bool(state.get("phase_completed"))
    unfinished = set(phase_names[i + 1:] if completed else phase_names[i:])
    saved = state.get("settings")
    if saved is None:
        raise ConfigError(f"checkpoint {ckpt_path} does not record its run's settings (written by an older medimg); "
                          "it cannot be resumed safely: start a new run")
    changes = changed_settings(saved, settings, unfinished)
    if changes:
        raise ConfigError("resuming may not change what the run computes (model, data, seed, finished phases); "
                          "these settings differ from the run's own:\n  " + "\n  ".join(changes) +
                          "\nDrop those overrides to resume, or start a new run with them.")
    resume = Resume(Path(ckpt_path), state, i + 1 if completed else i, mid_phase=not completed)
    where = f"after phase {phase!r}" if completed else f"in phase {phase!r}"
    if not quiet:
        log.info("resuming %s from %s (phases done: %s); overrides of this session: %s", where, ckpt_path,
                 sorted(resume.phases_done) or "none", changed_allowed(saved, settings) or "none")
    return resume
