"""The end of a training run (rank 0): ``best.ckpt`` with its calibration, the test results, what produced them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.loggers import TensorBoardLogger

from medimg.config.schema import as_dict, flatten
from medimg.config.training import TrainSettings
from medimg.evaluation.evaluator import Evaluation, write_evaluation
from medimg.files import write_json
from medimg.inference import save_calibrated
from medimg.reporting import print_metrics
from medimg.run_info import run_info


def finish_run(s: TrainSettings, run_dir: Path, best: str | None, calibration: dict[str, Any] | None,
               result: Evaluation | None, trainer: L.Trainer) -> None:
    """best.ckpt (with the calibration), the test results (metrics.json, predictions.csv, figures/, report.md),
    run_info.json, hparams with the final metrics, the printed table."""
    if best:
        save_calibrated(best, run_dir / "checkpoints" / "best.ckpt", calibration)
    metrics = result.metrics if result else {}
    headline = {k: v for k, v in metrics.items() if "/per_class/" not in k}
    if result:
        title = f"Test evaluation: {s.dataset.name}, {s.backbone.name}, stage {s.stage.name}"
        ckpt = str(run_dir / "checkpoints" / "best.ckpt") if best else "none saved (the final weights were evaluated)"
        write_evaluation(result, run_dir, trainer.loggers, title, [("run folder", str(run_dir)), ("checkpoint", ckpt)])
    info = run_info()
    write_json(run_dir / "run_info.json", info)
    hparams = hyperparameters(s, info)
    for lg in trainer.loggers:  # TensorBoard's hparams tab shows the final metrics beside the config
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(hparams, headline)
        else:
            lg.log_hyperparams(hparams)
    print_metrics(headline, title=f"test metrics ({s.dataset.name}, {s.backbone.name})")
    print(f"run folder: {run_dir}")


def hyperparameters(s: TrainSettings, info: dict[str, Any]) -> dict[str, Any]:
    """The settings that define the run, flat, as loggers take them."""
    d = as_dict(s)
    keep = {k: d[k] for k in ("seed", "dataset", "backbone", "stage", "optim", "model", "trainer")}
    keep["run_info"] = info
    return {k: v if isinstance(v, int | float | str | bool) else str(v) for k, v in flatten(keep, sep="/").items()}
