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
from medimg.errors import ConfigError, MissingDataError
from medimg.evaluate_folds import evaluate_folds
from medimg.evaluation.analyses import evaluation_options
from medimg.evaluation.cross_validation import find_fold_runs
from medimg.evaluation.evaluator import Evaluation, evaluate_split, predict_split, write_evaluation
from medimg.evaluation.external import (
    Column,
    comparison,
    comparison_lines,
    other_site,
    summary_line,
    training_site_metrics,
)
from medimg.evaluation.robustness import evaluate_robustness
from medimg.evaluation.runs import dataset_of_run, evaluation_dir
from medimg.evaluation.tta import resolve_views
from medimg.evaluation.validation_fit import fit_on_validation
from medimg.files import write_json
from medimg.inference import TrainedModel, check_same_classes, load_trained, run_dir_of, save_calibrated
from medimg.training.trainer import build_eval_trainer

log = logging.getLogger("medimg.evaluate")
REFITTED = "refitted"  # the sub-folder (and metrics prefix) of the evaluation with rules refitted on this data set


def own_dataset(run_dir: Path, cfg: DictConfig, trained: TrainedModel) -> dict[str, Any] | None:
    """The ``dataset`` config the run was trained with: its ``.hydra/config.yaml``, else the settings its
    checkpoint ``trained`` records; None when neither is there."""
    try:
        return dataset_of_run(run_dir, cfg.paths)
    except MissingDataError:
        return (trained.state.get("settings") or {}).get("dataset")


def dataset_config(given: dict[str, Any] | None, own: dict[str, Any] | None, run_dir: Path,
                   cfg: DictConfig) -> dict[str, Any]:
    """``dataset=<name>`` picks a data set; without it the run's own ``own`` is used, adjusted by any
    ``+dataset.<key>=<value>`` overrides."""
    given = given or {}
    if "source" in given:  # a whole dataset group was chosen
        return given
    if own is None:
        dataset_of_run(run_dir, cfg.paths)  # raises the message that says what to pass
    return {**own, **given}


def own_settings(own: dict[str, Any] | None) -> DatasetSettings | None:
    """The run's own data set as settings, to tell another site's images from its own; None when unknown or
    written by a version whose keys this one does not read."""
    try:
        return read(DatasetSettings, own, "dataset") if own is not None else None
    except ConfigError:
        return None


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
    own = own_dataset(first_run, cfg, trained)
    ds = read(DatasetSettings, dataset_config(given, own, first_run, cfg), "dataset")
    dm = build_datamodule(ds, e, rt, trained)
    if e.cv_dir:
        out_dir = Path(e.output_dir) if e.output_dir else Path(e.cv_dir)
        trainer = build_eval_trainer(e.trainer, rt, e.logger, True, out_dir, "cv_ensemble")
        return evaluate_folds(trainer, dm, Path(e.cv_dir), out_dir, e.split, resolve_views(e.tta, e.tta_views))
    return evaluate_checkpoint(e, rt, dm, trained, other_site(own_settings(own), ds))


def evaluate_checkpoint(e: EvaluateSettings, rt: Runtime, dm: MedImageDataModule, trained: TrainedModel,
                        external: bool = False) -> dict[str, float]:
    """Evaluate the checkpoint as trained; with ``recalibrate`` also with its calibrator, conformal threshold and
    referral threshold refitted on this data set's validation split (``refitted/``, its metrics returned as
    ``refitted/<key>``). ``external``: the data are another site's, so the report sets them beside the run's
    own test split."""
    check_same_classes(trained.class_names, dm.class_names, e.ckpt_path, dm.ds.name)
    run_dir = run_dir_of(e.ckpt_path)
    out_dir = Path(e.output_dir) if e.output_dir else evaluation_dir(run_dir, dm.ds.name, e.split, run_id())
    trainer = build_eval_trainer(e.trainer, rt, e.logger, True, out_dir, "evaluate")
    model, views = trained.model, resolve_views(e.tta, e.tta_views)
    options = evaluation_options(e.evaluation, dm.ds.subgroup_columns, dm.ds.subgroup_bins)
    outputs = predict_split(trainer, model, dm, e.split, views)  # once: both evaluations score these logits
    result = evaluate_split(trainer, model, dm, e.split, trained.calibration, views, options,
                            conformal=trained.conformal, referral=trained.referral, outputs=outputs)
    refitted = None
    if e.recalibrate:
        fit = fit_on_validation(trainer, model, dm, e.calibration, e.evaluation.conformal, e.evaluation.selective)
        refitted = evaluate_split(trainer, model, dm, e.split, fit.calibration, views, options,
                                  conformal=fit.conformal, referral=fit.referral, outputs=outputs)
    calibration = (refitted or result).calibration
    if e.robustness:
        c = e.corruptions
        evaluate_robustness(trainer, model, dm, calibration, out_dir / "robustness", c.names, c.severities, c.seed, c.metric,
                            e.split, dm.ds.eval_batch_size, dm.ds.num_workers)
    if trainer.is_global_zero:
        write_results(e, dm, trained, out_dir, trainer, result, refitted, run_dir if external else None)
    metrics = dict(result.metrics)
    if refitted is not None:
        metrics.update({f"{REFITTED}/{k}": v for k, v in refitted.metrics.items()})
    return metrics


def write_results(e: EvaluateSettings, dm: MedImageDataModule, trained: TrainedModel, out_dir: Path, trainer,
                  result: Evaluation, refitted: Evaluation | None, training_run: Path | None) -> None:
    """Rank 0: the evaluation as trained in ``out_dir`` (and refitted in ``out_dir/refitted``, with the
    checkpoint that carries the refitted rules), the sites side by side when ``training_run`` (another site's
    data) has its own test metrics, and the console summary."""
    title = f"Evaluation: {dm.ds.name}, {trained.backbone}"
    facts = [("checkpoint", str(e.ckpt_path)), ("data set", dm.ds.name), ("output folder", str(out_dir))]
    prefix = f"{e.split}/"
    here = f"{dm.ds.name}, {e.split} split"
    columns = [Column(f"{here}, as trained", result.metrics, prefix)]
    if refitted is not None:
        columns.append(Column(f"{here}, refitted on its validation split", refitted.metrics, prefix))
    reference = training_site_metrics(training_run) if training_run is not None else None
    if reference is not None:
        columns.insert(0, Column("training site, test split", reference, "test/"))
    notes = [] if training_run is None or reference is not None else [
        f"The training site's figures are not shown: {training_run / 'metrics.json'} holds no test metrics."]
    sections = comparison_lines(columns, notes, "Against the training site" if training_run is not None
                                else "As trained and refitted on this data set")
    write_evaluation(result, out_dir, trainer.loggers, title, facts, sections=sections, figures=e.evaluation.figures)
    if len(columns) > 1:
        write_json(out_dir / "site_comparison.json", {"columns": [c.label for c in columns],
                                                      "rows": comparison(columns)})
    lines = summary_lines(
        result.metrics, f"{dm.ds.name}, {trained.backbone}: {e.split} split", out_dir, prefix=prefix,
        level=e.evaluation.interval_level, folder_label="results in", positive=result.class_names[-1],
        calibration=result.calibration.method if result.calibration.is_calibrated else None,
        tensorboard=tensorboard_in(trainer.loggers))
    if refitted is not None:
        refit_dir = out_dir / REFITTED
        ckpt = save_calibrated(e.ckpt_path, refit_dir / "checkpoints" / "best.ckpt", refitted.calibration,
                               refitted.conformal, refitted.referral)
        write_evaluation(refitted, refit_dir, (), f"{title}, refitted on {dm.ds.name}'s validation split",
                         [*facts[:2], ("refitted checkpoint", f"{ckpt} (the weights as trained; the calibrator, "
                                       "conformal and referral thresholds fitted on this data set's validation split)"),
                          ("output folder", str(refit_dir))], sections=sections, figures=e.evaluation.figures)
    if reference is not None:  # from the training site to this one (and refitted here)
        changes = summary_line(columns[0], [("vs training site", columns[1]),
                                            *([("refitted here", columns[2])] if refitted is not None else [])])
    else:
        changes = summary_line(columns[0], [("refitted here", columns[1])] if refitted is not None else [])
    at = next(i for i, line in enumerate(lines) if line.startswith("results in:"))
    extra = [*changes, *([f"{'refitted in:':<13}{out_dir / REFITTED}"] if refitted is not None else [])]
    print_summary([*lines[:at], *extra, *lines[at:]])


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    run_task(evaluate, cfg)


if __name__ == "__main__":
    guard_command_line("evaluate")  # an unknown key: one line, before any work
    main()
