"""Train a classifier: ``python -m medimg.train [group=option ...] [key=value ...]``.

Reads top to bottom: read and check the settings (before any data work: the config, the recipe's blocks,
the backbone's weights); claim the run folder; seed; build the data module and the model; run the stage's
phases (each a fit with its own epochs, early stopping and best checkpoint, starting from the previous phase's
best weights; ``last.ckpt`` after every epoch and phase); calibrate the best checkpoint on validation and store
the calibration in ``best.ckpt``; evaluate the test split (``metrics.json``, ``predictions.csv``, ``figures/``,
``report.md``); return ``optimized_metric`` for sweepers. ``ckpt_path=<run>/checkpoints/last.ckpt`` resumes.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from pathlib import Path

import hydra
import lightning as L
from omegaconf import DictConfig, OmegaConf

from medimg.cli import CONF_DIR, run_task
from medimg.config.runtime import Runtime, resolve_runtime
from medimg.config.schema import as_dict
from medimg.config.training import TrainSettings, train_settings
from medimg.data.datamodule import MedImageDataModule
from medimg.data.sources import check_present, work_dir
from medimg.errors import ConfigError
from medimg.evaluation.analyses import evaluation_options
from medimg.evaluation.evaluator import evaluate_split
from medimg.evaluation.subgroups import check_subgroup_columns
from medimg.evaluation.validation_fit import fit_on_validation
from medimg.inference import run_dir_of
from medimg.models.backbones import blocks_of, check_weights
from medimg.models.freezing import resolve_blocks
from medimg.training.callbacks.epoch_log import progress_bar_shown
from medimg.training.finish import finish_run, keep_best
from medimg.training.model import build_model, run_preprocess
from medimg.training.phase_book import PhaseBook
from medimg.training.phases import load_weights, run_phases
from medimg.training.resume import open_resume
from medimg.training.run_folder import claim, prepare_argv
from medimg.training.teacher import teacher_checkpoints
from medimg.training.trainer import build_eval_trainer

log = logging.getLogger("medimg.train")


def check_recipe(s: TrainSettings) -> None:
    """What can be checked before data work: every phase's blocks exist, the weights can be had."""
    blocks = blocks_of(s.backbone.name)
    for name, ph in s.stage.phases.items():
        try:
            trained = resolve_blocks(ph.train_blocks, blocks)
        except ConfigError as e:
            raise ConfigError(f"stage.phases.{name}.train_blocks: {e}") from None
        if not trained and s.backbone.weights is None:  # a baseline on random features, rarely what is meant
            log.warning("phase %r trains only the head, on a backbone with random weights (backbone.weights=null): "
                        "its features are random. To train from scratch, use stage=scratch (every layer trains)",
                        name)
        if ph.feature_cache and trained:
            raise ConfigError(f"stage.phases.{name}.feature_cache=true needs a frozen backbone, but the phase "
                              f"trains {trained}; set stage.phases.{name}.train_blocks=[] or "
                              f"stage.phases.{name}.feature_cache=false")
    check_weights(s.backbone.name, s.backbone.weights)
    if s.distill.teacher is not None:
        teacher_checkpoints(s.distill.teacher)  # a wrong path is named before any data work
        for name, ph in s.stage.phases.items():
            if ph.feature_cache:
                log.info("phase %r solves the head on cached features, from the labels alone; the teacher takes "
                         "part in the phases trained on images", name)


def runtime_of(s: TrainSettings) -> Runtime:
    t = s.trainer
    return resolve_runtime(t.accelerator, t.precision, t.deterministic, s.model.channels_last, s.dataset.pin_memory,
                           s.model.step_loss_in_bar, s.dataset.batch_augment)


def train(cfg: DictConfig) -> dict[str, float]:
    s = train_settings(OmegaConf.to_container(cfg, resolve=True))
    rt = runtime_of(s)
    run_dir = run_dir_of(s.ckpt_path) if s.ckpt_path else Path(s.paths.output_dir)
    resume = open_resume(s.ckpt_path, as_dict(s), list(s.stage.phases)) if s.ckpt_path else None
    check_present(s.dataset)  # a missing data folder is named before the weights are looked for
    check_recipe(s)
    claim(run_dir, resuming=resume is not None)
    L.seed_everything(s.seed, workers=True, verbose=False)

    dm = MedImageDataModule(s.dataset, work_dir(s.dataset, s.paths.cache_dir), rt.pin_memory, s.seed,
                            run_preprocess(s.dataset), batch_augment=rt.batch_augment)
    dm.prepare_data()
    dm.setup("fit")
    check_subgroup_columns(dm.table, s.dataset.subgroup_columns)  # before training, not after
    model = build_model(s, rt, dm, resume)

    book = run_phases(s, rt, model, dm, run_dir, PhaseBook(dm.class_names, as_dict(s)), resume)
    best, best_score = book.best(s.monitor_mode) or (None, None)
    if best:
        load_weights(model, best)
    bar = progress_bar_shown(s.trainer.enable_progress_bar, s.callbacks.epoch_log)
    trainer = build_eval_trainer(dataclasses.replace(s.trainer, enable_progress_bar=bar), rt, s.logger,
                                 s.callbacks.rich_progress, run_dir, "test")
    calibration, sets, referral = fit_on_validation(trainer, model, dm, s.calibration, s.evaluation.conformal,
                                                    s.evaluation.selective)
    if trainer.is_global_zero:  # every rank took part in the evaluations; rank 0 writes
        keep_best(run_dir, best, calibration, sets, referral)
    options = evaluation_options(s.evaluation, s.dataset.subgroup_columns, s.dataset.subgroup_bins)
    result = evaluate_split(trainer, model, dm, "test", calibration, options=options, conformal=sets,
                            referral=referral) if s.test else None
    metrics = dict(result.metrics) if result else {}
    if best_score is not None:  # what a search should rank by: validation, not test (also with test=false)
        metrics[f"{s.monitor}_best"] = best_score
    if trainer.is_global_zero:
        finish_run(s, run_dir, best, result, metrics, trainer)
    return metrics


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    metrics = run_task(train, cfg)
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s is not among the run's metrics %s", name, sorted(metrics))
        return None
    return metrics.get(name) if name else None


if __name__ == "__main__":
    sys.argv = prepare_argv(sys.argv)
    main()
