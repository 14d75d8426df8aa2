"""One configuration, measured in its own process: the command, the step times it reports, one table row.

``kind`` is ``medimg`` (the real command line, ``python -m medimg.train ... callbacks.throughput=true``, step
times read from ``<run>/throughput.json``) or one of the runners in ``runners.py`` (``baseline``, ``plain``,
``ceiling``, ``loader``: ``train_throughput.py --one '<json spec>'``, step times from its ``RESULT`` line).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import statistics
import sys
from pathlib import Path
from typing import Any

from medimg.files import write_json

from . import REPO
from .data import folder_overrides
from .measure import measure_process, wait_quiet
from .runners import CEILING_WARMUP

ENTRY_POINT = REPO / "benchmarks" / "train_throughput.py"
MEDIMG_RUN = [  # every measured medimg run: training only, no validation, test, calibration or early stop
    "trainer.limit_val_batches=0",
    "test=false",
    "callbacks.early_stopping.enabled=false",
    "logger=csv",
    "calibration=none",
    "callbacks.throughput=true",
]


def checked_process(cmd: list[str], log: Path) -> tuple[dict[str, Any], str]:
    """``measure_process`` of ``cmd``, and its log; a failure raises with the log's last lines."""
    proc = measure_process(cmd, log)
    text = log.read_text()
    if proc["rc"] != 0:
        raise RuntimeError(
            f"{log.stem} failed (exit {proc['rc']}); last lines of {log}:\n"
            + "\n".join(text.splitlines()[-25:])
        )
    return proc, text


def run_spec(spec: dict[str, Any], log: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run a runner's ``spec`` in its own process: (process figures, its ``RESULT``)."""
    proc, text = checked_process([sys.executable, str(ENTRY_POINT), "--one", json.dumps(spec)], log)
    return proc, json.loads(next(ln for ln in text.splitlines() if ln.startswith("RESULT "))[7:])


def step_summary(batch: int, step_s: list[float]) -> dict[str, float]:
    """images/s and steps/s from the median step time; the spread of the step times around it."""
    med = statistics.median(step_s)
    return {
        "img_s": batch / med,
        "steps_s": 1.0 / med,
        "n": len(step_s),
        "spread": (max(step_s) - min(step_s)) / med,
    }


def phase_figures(entry: dict[str, Any]) -> dict[str, Any]:
    """A whole phase's figure from its throughput.json entry: all images trained over the fit's wall time."""
    n_train = entry["images_trained"] // entry["epochs"]
    extract = entry.get("feature_extract_s")
    return {
        "img_s": entry["images_per_s_fit"],
        "steps_s": float("nan"),
        "n": 0,
        "spread": 0.0,
        "fit_s": entry["fit_s"],
        "epochs": entry["epochs"],
        "extract_img_s": n_train / extract["train"] if extract else None,
    }


class Bench:
    """The benchmark's settings (the parsed command line) and every row measured so far."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.batch, self.steps, self.warmup = args.batch_size, args.steps, args.warmup
        self.root = args.data_dir / f"ham-like-n{args.images}"
        self.out = args.data_dir / "runs" / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        self.rows: list[dict[str, Any]] = []

    def overrides(self, model: str, stage: str, extra: list[str] = ()) -> list[str]:
        """The config of one measured configuration, as ``python -m medimg.train`` overrides."""
        return [
            *folder_overrides(self.root, self.args.img_size),
            f"dataset.batch_size={self.batch}",
            f"backbone={model}",
            "backbone.weights=null",
            f"stage={stage}",
            *extra,
        ]

    def run(
        self, kind: str, model: str, stage: str, label: str, extra: list[str] = (), **spec
    ) -> dict[str, Any]:
        """Measure one configuration; again (up to ``--retries`` times, after waiting for a quiet machine)
        when other processes took more than ``--max-others`` of the CPU meanwhile."""
        for attempt in range(self.args.retries + 1):
            row = self._run_once(kind, model, stage, label, list(extra), attempt, **spec)
            if row["others"] <= self.args.max_others or attempt == self.args.retries:
                break
            print(
                f"  (other processes took {row['others']:.0%} of the CPU: measuring again once it is quiet)",
                file=sys.stderr,
                flush=True,
            )
            wait_quiet(300)
        row["attempts"] = attempt + 1
        self.rows.append(row)
        write_json(self.out / "rows.json", self.rows)  # kept if a later run fails
        return row

    def _run_once(
        self, kind: str, model: str, stage: str, label: str, extra: list[str], attempt: int, **spec
    ):
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{model}-{stage}-{label}").strip("_")
        name += f"-again{attempt}" if attempt else ""
        overrides = self.overrides(model, stage, extra)
        if kind == "medimg":
            proc, step_s, figures = self._run_medimg(overrides, self.out / name, spec.get("fit_epochs"))
        else:
            proc, step_s, figures = self._run_runner(kind, overrides, self.out / f"{name}.log", spec)
        summary = step_summary(self.batch, step_s) if step_s else {}
        row = {"kind": kind, "model": model, "stage": stage, "label": label, **summary, **figures}
        row.update(step_s=step_s, **{k: proc[k] for k in ("rss_mib", "pss_mib", "wall_s", "others")})
        print(
            f"  {name:<44} {row['img_s']:7.1f} img/s  (spread {row['spread']:.0%}, "
            f"others' CPU {row['others']:.0%}, {row['wall_s']:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        return row

    def _run_medimg(self, overrides: list[str], run_dir: Path, fit_epochs: int | None):
        """``python -m medimg.train``: a few steps of one epoch, or ``fit_epochs`` whole epochs (the phase as
        a user runs it); (process figures, step times after the warm-up, whole-phase figures)."""
        length = (
            [f"trainer.max_epochs={fit_epochs}"]
            if fit_epochs
            else ["trainer.max_epochs=1", f"trainer.limit_train_batches={self.warmup + self.steps}"]
        )
        cmd = [
            sys.executable,
            "-m",
            "medimg.train",
            *overrides,
            *length,
            *MEDIMG_RUN,
            f"hydra.run.dir={run_dir}",
        ]
        proc, _ = checked_process(cmd, run_dir.with_name(f"{run_dir.name}.log"))
        entry = next(iter(json.loads((run_dir / "throughput.json").read_text()).values()))
        if fit_epochs:
            return proc, [], phase_figures(entry)
        return proc, (entry.get("warmup_step_s", []) + entry["step_s"])[self.warmup :], {}

    def _run_runner(self, kind: str, overrides: list[str], log: Path, spec: dict[str, Any]):
        """A runner of ``runners.py``: (process figures, its step times, the time of its first step)."""
        ceiling = kind == "ceiling"
        spec = {
            "kind": kind,
            "overrides": overrides,
            "batch": self.batch,
            "steps": self.args.ceiling_steps if ceiling else self.steps,
            "warmup": CEILING_WARMUP if ceiling else self.warmup,
            **spec,
        }
        proc, result = run_spec(spec, log)
        return proc, result["step_s"], {"first_step_s": result.get("first_step_s")}
