"""Evaluate a checkpoint: ``python -m medimg.evaluate ckpt_path=<ckpt> [dataset=<name>] [tta=true]``,
or a k-fold cross-validation: ``python -m medimg.evaluate cv_dir=<multirun folder>``.

Checkpoint: load it safely with its stored calibration; build the data module (the run's own data set, or
``dataset=...`` with the same classes); predict the split (optionally averaging test-time augmented views);
write ``metrics.json``, ``predictions.csv``, ``figures/`` and ``report.md`` into a folder of its own,
``<run>/evaluations/<dataset>-<split>-<time>-<id>/`` (or ``output_dir``): the run's own results stay as training
wrote them.

Cross-validation: read every fold's ``metrics.json`` (mean and standard deviation of each metric), then
evaluate the ensemble of the fold checkpoints on the shared test split; write ``cv_metrics.json``,
``report.md`` and the ensemble's files (``ensemble/``) into the multirun folder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from medimg.cli import CONF_DIR, run_id, run_task
from medimg.config.commands import EvaluateSettings
from medimg.config.dataset import DatasetSettings
from medimg.config.overrides import guard_command_line
from medimg.config.runtime import Runtime, resolve_runtime
from medimg.config.schema import read
from medimg.console import print_summary, summary_lines, tensorboard_in
from medimg.data.datamodule import MedImageDataModule
from medimg.data.sources import work_dir
from medimg.errors import MissingDataError
from medimg.evaluate_folds import evaluate_folds
from medimg.evaluation.analyses import evaluation_options
from medimg.evaluation.cross_validation import find_fold_runs
from medimg.evaluation.evaluator import evaluate_split, write_evaluation
from medimg.evaluation.robustness import evaluate_robustness
from medimg.evaluation.runs import dataset_of_run, evaluation_dir
from medimg.evaluation.tta import resolve_views
from medimg.evaluation.validation_fit import fit_on_validation
from medimg.inference import TrainedModel, check_same_classes, load_trained, run_dir_of
from medimg.training.trainer import build_eval_trainer

log = logging.getLogger("medimg.evaluate")


def dataset_config(c: dict[str, Any], run_dir: Path, cfg: DictConfig, trained: TrainedModel) -> dict[str, Any]:
    """``dataset=<name>`` picks a data set; without it the run's own is used (its ``.hydra/config.yaml``, else the
    settings its checkpoint ``trained`` records), adjusted by any ``+dataset.<key>=<value>`` overrides."""
    given = c.get("dataset") or {}
    if "source" in given:  # a whole dataset group was chosen
        return given
    try:
        own = dataset_of_run(run_dir, cfg.paths)
    except MissingDataError:
        own = (trained.state.get("settings") or {}).get("dataset")
        if own is None:
            raise
    return {**own, **given}


def runtime_of(e: EvaluateSettings) -> Runtime:
    t = e.trainer
    return resolve_runtime(t.accelerator, t.precision, t.deterministic, False, "auto", False)


def build_datamodule(ds: DatasetSettings, e: EvaluateSettings, rt: Runtime,
                     trained: TrainedModel) -> MedImageDataModule:
    """The data prepared as the checkpoint ``trained`` says (its stored preprocessing: size, resampling,
    statistics), its classes in the checkpoint's order."""
    dm = MedImageDataModule(ds, work_dir(ds, e.paths.cache_dir), rt.pin_memory, e.seed, trained.preprocess,
                            class_order=trained.class_names)
    dm.prepare_data()
    dm.setup("test")
    return dm


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``ckpt_path`` (or the folds of ``cv_dir``); returns the metrics."""
    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    given = c.pop("dataset", None)  # a dataset group, +dataset.<key> adjustments of the run's own, or nothing
    e = read(EvaluateSettings, c, "")
    L.seed_everything(e.seed, workers=True, verbose=False)
    rt = runtime_of(e)
    first_run = find_fold_runs(e.cv_dir)[0] if e.cv_dir else run_dir_of(e.ckpt_path)
    trained = load_trained(first_run / "checkpoints" / "best.ckpt" if e.cv_dir else e.ckpt_path)  # read once
    ds = read(DatasetSettings, dataset_config({"dataset": given}, first_run, cfg, trained), "dataset")
    dm = build_datamodule(ds, e, rt, trained)
    if e.cv_dir:
        out_dir = Path(e.output_dir) if e.output_dir else Path(e.cv_dir)
        trainer = build_eval_trainer(e.trainer, rt, e.logger, True, out_dir, "cv_ensemble")
        return evaluate_folds(trainer, dm, Path(e.cv_dir), out_dir, e.split, resolve_views(e.tta, e.tta_views))
    return evaluate_checkpoint(e, rt, dm, trained)


def evaluate_checkpoint(e: EvaluateSettings, rt: Runtime, dm: MedImageDataModule,
                        trained: TrainedModel) -> dict[str, float]:
    check_same_classes(trained.class_names, dm.class_names, e.ckpt_path, dm.ds.name)
    run_dir = run_dir_of(e.ckpt_path)
    out_dir = Path(e.output_dir) if e.output_dir else evaluation_dir(run_dir, dm.ds.name, e.split, run_id())
    trainer = build_eval_trainer(e.trainer, rt, e.logger, True, out_dir, "evaluate")
    model, calibration, sets, referral = trained.model, trained.calibration, trained.conformal, trained.referral
    if e.recalibrate:
        calibration, sets, referral = fit_on_validation(trainer, model, dm, e.calibration, e.evaluation.conformal,
                                                        e.evaluation.selective)
    options = evaluation_options(e.evaluation, dm.ds.subgroup_columns, dm.ds.subgroup_bins)
    result = evaluate_split(trainer, model, dm, e.split, calibration, resolve_views(e.tta, e.tta_views), options,
                            conformal=sets, referral=referral)
    if e.robustness:
        c = e.corruptions
        evaluate_robustness(trainer, model, dm, calibration, out_dir / "robustness", c.names, c.severities, c.seed, c.metric,
                            e.split, dm.ds.eval_batch_size, dm.ds.num_workers)
    if trainer.is_global_zero:
        title = f"Evaluation: {dm.ds.name}, {trained.backbone}"
        facts = [("checkpoint", str(e.ckpt_path)), ("data set", dm.ds.name), ("output folder", str(out_dir))]
        write_evaluation(result, out_dir, trainer.loggers, title, facts)
        print_summary(summary_lines(
            result.metrics, f"{dm.ds.name}, {trained.backbone}: {e.split} split", out_dir, prefix=f"{e.split}/",
            level=e.evaluation.interval_level, folder_label="results in", positive=result.class_names[-1],
            calibration=calibration.method if calibration.is_calibrated else None,
            tensorboard=tensorboard_in(trainer.loggers)))
    return dict(result.metrics)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


if __name__ == "__main__":
    guard_command_line("evaluate")  # an unknown key: one line, before any work
    main()
