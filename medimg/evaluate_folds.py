"""A k-fold cross-validation evaluated: the folds' own metrics (mean, spread) and their ensemble on the test split."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from medimg.console import print_summary, summary_lines, tensorboard_in
from medimg.data.datamodule import MedImageDataModule
from medimg.evaluation import cross_validation as cv
from medimg.evaluation.calibration import FoldEnsemble
from medimg.evaluation.evaluator import Evaluation, split_loader, split_metrics, write_evaluation
from medimg.evaluation.predictions import collect_outputs
from medimg.files import write_json
from medimg.inference import check_same_classes, load_trained

log = logging.getLogger("medimg.evaluate")


def ensemble_evaluation(trainer: L.Trainer, dm: MedImageDataModule, runs: Sequence[Path], split: str,
                        views: Sequence[str]) -> Evaluation:
    """The folds' calibrated probabilities on ``split``, averaged, scored as one model."""
    table = dm.split_table(split)
    fold_probs, states, outputs = [], [], None
    for run in runs:
        ckpt = run / "checkpoints" / "best.ckpt"
        trained = load_trained(ckpt)
        check_same_classes(trained.class_names, dm.class_names, ckpt, dm.ds.name)
        outputs = collect_outputs(trainer, trained.model, split_loader(dm, split), views, expected_rows=len(table))
        fold_probs.append((outputs.probs(None), outputs.probs(trained.calibration)))
        states.append(trained.calibration)
        log.info("fold %d: %s", cv.fold_of(run), trained.calibration.describe())
    raw, cal = cv.ensemble_probs(fold_probs)
    state = FoldEnsemble.of(states)
    names = dm.class_names
    return Evaluation(
        split=split, class_names=names, targets=outputs.targets, raw_probs=raw, final_probs=cal, calibration=state,
        metrics=split_metrics(raw, cal, outputs.targets, names, state, prefix=f"{split}/"),
        predictions=cv.ensemble_table(table, outputs.rows, outputs.targets, raw, cal, state, names),
        views=list(views))


def evaluate_folds(trainer: L.Trainer, dm: MedImageDataModule, cv_dir: Path, out_dir: Path, split: str,
                   views: Sequence[str]) -> dict[str, float]:
    """Mean/std of the folds' metrics and the fold ensemble; writes cv_metrics.json, report.md, ensemble/."""
    runs = cv.find_fold_runs(cv_dir)
    mean, std, values = cv.aggregate(cv.read_fold_metrics(runs))
    log.info("cross-validation: %d fold runs in %s", len(runs), cv_dir)
    ensemble = ensemble_evaluation(trainer, dm, runs, split, views)
    if trainer.is_global_zero:
        ens_dir = out_dir / "ensemble"
        write_evaluation(ensemble, ens_dir, trainer.loggers, f"Fold ensemble ({len(runs)} folds): {split} split",
                         [("folds", ", ".join(str(r) for r in runs)), ("data set", dm.ds.name)])
        write_json(out_dir / "cv_metrics.json", {"num_folds": len(runs), "fold_runs": [str(r) for r in runs],
                                                 "mean": mean, "std": std, "per_fold": values,
                                                 "ensemble": dict(ensemble.metrics)})
        figs = {n: ens_dir / "figures" / f"{n}.png" for n in ("roc_curves", "reliability", "confusion_matrix")}
        cv.cv_report(out_dir / "report.md", runs, mean, std, ensemble.metrics, ens_dir,
                     {n: p for n, p in figs.items() if p.is_file()}, prefix=f"{split}/")
        print_summary(summary_lines(
            ensemble.metrics, f"cross-validation, {len(runs)} folds: their ensemble on the {split} split", out_dir,
            prefix=f"{split}/", calibration="each fold's own", folder_label="results in",
            metrics_file="cv_metrics.json", positive=ensemble.class_names[-1],
            tensorboard=tensorboard_in(trainer.loggers), folds=(mean, std)))
    return {f"ensemble/{k}": v for k, v in ensemble.metrics.items()} | {f"mean/{k}": v for k, v in mean.items()}
