"""Evaluate a checkpoint: ``python -m medimg.evaluate ckpt_path=<ckpt> [dataset=<name>] [tta=true]``,
or a k-fold cross-validation: ``python -m medimg.evaluate cv_dir=<multirun folder>``.

Checkpoint: load it safely (weights only) with its stored calibration; build the data module (the run's own
data set, or ``dataset=...`` with the same classes); predict the split (optionally averaging test-time
augmented views); write ``metrics.json``, ``predictions.csv``, ``figures/`` and ``report.md`` into the
checkpoint's run folder (or ``output_dir``).

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

from medimg.checkpoints import load_classifier
from medimg.console import quiet_third_party
from medimg.data.datamodule import MedImageDataModule
from medimg.evaluation import cross_validation as cv
from medimg.evaluation.calibration import describe
from medimg.evaluation.evaluator import (
    Evaluation,
    evaluate_split,
    fit_on_validation,
    split_loader,
    split_metrics,
    write_evaluation,
)
from medimg.evaluation.predictions import collect_outputs
from medimg.evaluation.runs import check_classes, dataset_of_run, run_dir_of
from medimg.evaluation.tta import resolve_views
from medimg.hardware import resolve_accelerator
from medimg.reporting import print_metrics, write_json
from medimg.trainer_builder import build_eval_trainer

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("medimg.evaluate")


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Evaluate ``ckpt_path`` (or the folds of ``cv_dir``); returns the metrics."""
    if cfg.get("cv_dir"):
        return evaluate_cross_validation(cfg)
    if not cfg.get("ckpt_path"):
        raise ValueError("nothing to evaluate: pass ckpt_path=<run>/checkpoints/best.ckpt or cv_dir=<multirun folder>")
    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(c["seed"], workers=True)
    ckpt = str(c["ckpt_path"])
    model, _ = load_classifier(ckpt)
    run_dir = run_dir_of(ckpt)
    out_dir = Path(c["output_dir"]) if c.get("output_dir") else run_dir
    dm = build_datamodule(dataset_config(c, run_dir, cfg), c["trainer"])
    check_classes(model.class_names, dm.class_names, ckpt, dm.cfg.get("name", "?"))

    trainer = build_eval_trainer(c, out_dir, version="evaluate")
    if c.get("recalibrate"):
        model.calibration = fit_on_validation(trainer, model, dm, c.get("calibration"))
    views = resolve_views(bool(c.get("tta")), c.get("tta_views"))
    split = c.get("split", "test")
    result = evaluate_split(trainer, model, dm, split, views)
    if trainer.is_global_zero:
        title = f"Evaluation: {dm.cfg.get('name')}, {model.hparams.backbone}"
        facts = [("checkpoint", ckpt), ("data set", str(dm.cfg.get("name"))), ("output folder", str(out_dir))]
        write_evaluation(result, out_dir, trainer.loggers, title, facts)
        print_metrics({k: v for k, v in result.metrics.items() if "/per_class/" not in k},
                      title=f"{split} metrics ({dm.cfg.get('name')}, {Path(ckpt).name})")
        print(f"results in: {out_dir}")
    return result.metrics


def dataset_config(c: dict[str, Any], run_dir: Path, cfg: DictConfig) -> dict[str, Any]:
    """``dataset=<name>`` picks a data set; without it the run's own is used, adjusted by any
    ``+dataset.<key>=<value>`` overrides (e.g. ``+dataset.eval_batch_size=32``)."""
    given = c.get("dataset") or {}
    if "source" in given:  # a whole dataset group was chosen
        return given
    return {**dataset_of_run(run_dir, cfg.paths), **given}


def build_datamodule(dataset_cfg: dict[str, Any], trainer_cfg: dict[str, Any]) -> MedImageDataModule:
    accelerator = resolve_accelerator(trainer_cfg.get("accelerator", "auto"))
    pin = dataset_cfg.get("pin_memory")
    dm = MedImageDataModule(dataset_cfg, pin_memory=accelerator == "gpu" if pin in ("auto", None) else bool(pin))
    dm.prepare_data()
    dm.setup("test")
    return dm


def evaluate_cross_validation(cfg: DictConfig) -> dict[str, float]:
    """Mean/std of the folds' metrics and the fold ensemble on the shared test split."""
    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)
    L.seed_everything(c["seed"], workers=True)
    cv_dir = Path(c["cv_dir"])
    runs = cv.find_fold_runs(cv_dir)
    out_dir = Path(c["output_dir"]) if c.get("output_dir") else cv_dir
    mean, std, values = cv.aggregate(cv.read_fold_metrics(runs))
    log.info("cross-validation: %d fold runs in %s", len(runs), cv_dir)

    dm = build_datamodule(dataset_config(c, runs[0], cfg), c["trainer"])
    split = c.get("split", "test")
    table = dm.split_table(split)
    trainer = build_eval_trainer(c, out_dir, version="cv_ensemble")
    views = resolve_views(bool(c.get("tta")), c.get("tta_views"))
    fold_probs, states, outputs = [], [], None
    for run in runs:
        ckpt = run / "checkpoints" / "best.ckpt"
        model, _ = load_classifier(ckpt)
        check_classes(model.class_names, dm.class_names, ckpt, dm.cfg.get("name", "?"))
        outputs = collect_outputs(trainer, model, split_loader(dm, split), views, expected_rows=len(table))
        fold_probs.append((outputs.probs(None), outputs.probs(model.calibration)))
        states.append(model.calibration)
        log.info("fold %d: %s", cv.fold_of(run), describe(model.calibration))
    raw, cal = cv.ensemble_probs(fold_probs)
    state = cv.ensemble_state(states)
    names = dm.class_names
    ensemble = Evaluation(
        split=split, class_names=names, targets=outputs.targets, raw_probs=raw, final_probs=cal, calibration=state,
        metrics=split_metrics(raw, cal, outputs.targets, names, state, prefix=f"{split}/"),
        predictions=cv.ensemble_table(table["path"].to_numpy()[outputs.rows.numpy()], outputs.targets, raw, cal,
                                      state, names),
        views=views)
    summary = {"num_folds": len(runs), "fold_runs": [str(r) for r in runs], "mean": mean, "std": std,
               "per_fold": values, "ensemble": ensemble.metrics}
    if trainer.is_global_zero:
        ens_dir = out_dir / "ensemble"
        write_evaluation(ensemble, ens_dir, trainer.loggers, f"Fold ensemble ({len(runs)} folds): {split} split",
                         [("folds", ", ".join(str(r) for r in runs)), ("data set", str(dm.cfg.get("name")))])
        write_json(out_dir / "cv_metrics.json", summary)
        figs = {n: ens_dir / "figures" / f"{n}.png" for n in ("roc_curves", "reliability", "confusion_matrix")}
        cv.cv_report(out_dir / "report.md", runs, mean, std, ensemble.metrics, ens_dir,
                     {n: p for n, p in figs.items() if p.is_file()}, prefix=f"{split}/")
        headline = {f"mean/{k}": v for k, v in mean.items() if "/per_class/" not in k}
        headline.update({f"std/{k}": v for k, v in std.items() if "/per_class/" not in k})
        headline.update({f"ensemble/{k}": v for k, v in ensemble.metrics.items() if "/per_class/" not in k})
        print_metrics(headline, title=f"cross-validation ({len(runs)} folds)")
        print(f"results in: {out_dir}")
    return {f"ensemble/{k}": v for k, v in ensemble.metrics.items()} | {f"mean/{k}": v for k, v in mean.items()}


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="evaluate")
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    evaluate(cfg)


if __name__ == "__main__":
    main()
