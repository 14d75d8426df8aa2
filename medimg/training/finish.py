"""The end of a training run (rank 0): ``best.ckpt`` with its calibration (kept before the test split is
evaluated, so a late failure loses nothing trained), then the test results and what produced them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from medimg.config.schema import as_dict, flatten
from medimg.config.training import TrainSettings
from medimg.console import print_summary, summary_lines, tensorboard_in
from medimg.evaluation.calibration import Calibration
from medimg.evaluation.conformal import Conformal
from medimg.evaluation.evaluator import Evaluation, write_evaluation
from medimg.evaluation.selective import ReferralRule
from medimg.files import write_json
from medimg.inference import save_calibrated
from medimg.run_info import run_info


def keep_best(run_dir: Path, best: str | None, calibration: Calibration, conformal: Conformal | None = None,
              referral: ReferralRule | None = None) -> None:
    """``checkpoints/best.ckpt``: the best phase's weights with the calibration (and the conformal and referral
    rules) fitted on validation."""
    if best:
        save_calibrated(best, run_dir / "checkpoints" / "best.ckpt", calibration, conformal, referral)


def finish_run(s: TrainSettings, run_dir: Path, best: str | None, result: Evaluation | None,
               metrics: dict[str, float], trainer: L.Trainer) -> None:
    """The test results (predictions.csv, figures/, report.md), metrics.json (the run's ``metrics``: the test
    metrics and the best validation score), run_info.json, hparams with the final metrics, the printed summary."""
    info = run_info()
    hparams = hyperparameters(s, info)
    if result:  # TensorBoard's hparams view shows the test metrics beside the settings
        title = f"Test evaluation: {s.dataset.name}, {s.backbone.name}, stage {s.stage.name}"
        ckpt = str(run_dir / "checkpoints" / "best.ckpt") if best else "none saved (the final weights were evaluated)"
        write_evaluation(replace(result, metrics=metrics), run_dir, trainer.loggers, title,
                         [("run folder", str(run_dir)), ("checkpoint", ckpt)], params=hparams,
                         figures=s.evaluation.figures)
    else:  # test=false: the validation score a search ranks by
        write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "run_info.json", info)
    for lg in trainer.loggers:
        if not isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(hparams)
        elif not result:
            lg.log_hyperparams(hparams, metrics)
    print_summary(run_summary(s, run_dir, result, metrics, trainer))


def run_summary(s: TrainSettings, run_dir: Path, result: Evaluation | None, metrics: dict[str, float],
                trainer: L.Trainer) -> list[str]:
    """The end of the run on one screen: headline figures, calibration, the run folder, report, TensorBoard."""
    what = "test split" if result else "no test split (test=false)"
    return summary_lines(
        metrics, f"{s.dataset.name}, {s.backbone.name}: {what}", run_dir, level=s.evaluation.interval_level,
        calibration=result.calibration.method if result and result.calibration.is_calibrated else None,
        report=result is not None, tensorboard=tensorboard_in(trainer.loggers),
        positive=result.class_names[-1] if result else "the second class")


def hyperparameters(s: TrainSettings, info: dict[str, Any]) -> dict[str, Any]:
    """The settings that define the run, flat, as loggers take them."""
    d = as_dict(s)
    keep = {k: d[k] for k in ("seed", "dataset", "backbone", "stage", "optim", "model", "trainer")}
    keep["run_info"] = info
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flatten(keep, sep="/").items()}
