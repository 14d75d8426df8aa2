"""Evaluating a trained classifier on a split: calibrate on validation, predict, score, write the results.

Used by ``medimg.train`` (after the phases) and ``medimg.evaluate`` (any checkpoint):

1. ``validation_fit.fit_on_validation``: calibration of the validation probabilities (``calibration`` config
   group) and, for binary tasks, the operating threshold; the conformal and referral rules: stored in
   ``best.ckpt`` as plain dicts.
2. ``evaluate_split``: predictions for every image of the split (DDP-safe, optional TTA), uncalibrated and
   calibrated metrics, the selective-prediction metrics (AURC; with a referral rule the share referred and the
   accuracy of the rest), the predictions table.
   With ``options`` (the ``evaluation`` config block, ``medimg.evaluation.analyses``) it also adds bootstrap
   intervals, the subgroup audit and the error gallery.
3. ``write_evaluation`` (rank 0): ``metrics.json``, ``predictions.csv``, ``subgroups.csv`` (with an audit),
   ``figures/*.png`` (with ``history.json`` in the folder also the learning curves), ``report.md``, and the
   metrics and figures to the loggers (TensorBoard gets the figures).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import lightning as L
import numpy as np
import pandas as pd
import torch
from lightning.pytorch.loggers import Logger, TensorBoardLogger

from medimg.errors import ConfigError
from medimg.evaluation import plots
from medimg.evaluation.analyses import EvaluationOptions, analyse
from medimg.evaluation.calibration import Calibration
from medimg.evaluation.conformal import Conformal, coverage_warnings, set_metrics
from medimg.evaluation.error_gallery import Gallery
from medimg.evaluation.figures import conformal_curve_of, evaluation_figures
from medimg.evaluation.learning_curves import learning_curves_from
from medimg.evaluation.metrics import classification_metrics
from medimg.evaluation.predictions import SplitOutputs, collect_outputs, predictions_table, write_predictions
from medimg.evaluation.report import conformal_lines, selective_lines, subgroup_lines, write_report
from medimg.evaluation.selective import ReferralRule, confidences, selective_metrics
from medimg.evaluation.subgroups import SubgroupAudit
from medimg.files import write_csv, write_json

log = logging.getLogger(__name__)

# metrics of the final decision that are reported once, without the _calibrated suffix
OPERATING_KEYS = ("sensitivity", "specificity", "threshold")


def split_loader(dm, split: str):
    if split == "val":
        return dm.val_dataloader()
    if split == "test":
        return dm.test_dataloader()
    raise ConfigError(f"split={split!r} cannot be evaluated; choose val or test")


def split_metrics(raw: torch.Tensor, final: torch.Tensor, targets: torch.Tensor, class_names: Sequence[str],
                  calibration: Calibration, prefix: str = "test/") -> dict[str, float]:
    """``<prefix><metric>`` for the uncalibrated probabilities (argmax decisions), ``<prefix><metric>_calibrated``
    for the calibrated ones (binary: at the operating threshold), and the operating point once, unsuffixed."""
    out = {f"{prefix}{k}": v for k, v in classification_metrics(raw, targets, class_names).items()}
    fin = classification_metrics(final, targets, class_names, threshold=calibration.threshold)
    for k, v in fin.items():
        if k in OPERATING_KEYS:
            out[f"{prefix}{k}"] = v
        elif calibration.is_calibrated:
            out[f"{prefix}{k}_calibrated"] = v
    return out


@dataclass(frozen=True)
class Evaluation:
    """Everything one evaluation produced, computed once and read by every writer: the raw and final
    (calibrated, thresholded) probabilities, the metrics (what ``metrics.json`` holds; read-only), the
    predictions table. ``rows`` (split-table row of each prediction) and ``table`` (those rows of the split
    table, metadata included) are set by ``evaluation_from_outputs``; ``subgroups``, ``gallery`` and ``notes``
    by ``analyses.analyse``, which returns a new evaluation (``with_analyses``)."""

    split: str
    class_names: list[str]
    targets: torch.Tensor
    raw_probs: torch.Tensor
    final_probs: torch.Tensor
    calibration: Calibration
    metrics: Mapping[str, float]
    predictions: pd.DataFrame
    conformal: Conformal | None = None
    sets: torch.Tensor | None = None  # N x C: each image's conformal prediction set
    referral: ReferralRule | None = None
    referred: torch.Tensor | None = None  # N: the images the referral rule refers
    views: Sequence[str] = ("identity",)
    rows: torch.Tensor | None = None
    table: pd.DataFrame | None = None
    subgroups: SubgroupAudit | None = None
    gallery: Gallery | None = None
    notes: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))

    @property
    def final_preds(self) -> torch.Tensor:
        return self.calibration.decide(self.final_probs)

    @property
    def confidence(self) -> np.ndarray:
        """Each image's confidence: the final probability of its decided class (``selective.confidences``)."""
        return confidences(self.final_probs, self.final_preds)

    @property
    def wrong(self) -> np.ndarray:
        return (self.final_preds != self.targets).cpu().numpy()

    def with_analyses(self, metrics: Mapping[str, float], subgroups: SubgroupAudit | None, gallery: Gallery | None,
                      notes: Sequence[str]) -> Evaluation:
        """This evaluation with more ``metrics`` (bootstrap intervals), its subgroup audit, gallery and notes."""
        return dataclasses.replace(self, metrics={**self.metrics, **metrics}, subgroups=subgroups, gallery=gallery,
                                   notes=(*self.notes, *notes))


def predict_split(trainer: L.Trainer, model, dm, split: str, views: Sequence[str] = ("identity",)) -> SplitOutputs:
    """``model``'s logits for every image of ``split`` (each of ``views``), gathered on every rank."""
    return collect_outputs(trainer, model, split_loader(dm, split), views, expected_rows=len(dm.split_table(split)))


def evaluate_split(trainer: L.Trainer, model, dm, split: str, calibration: Calibration,
                   views: Sequence[str] = ("identity",), options: EvaluationOptions | None = None,
                   conformal: Conformal | None = None, referral: ReferralRule | None = None,
                   outputs: SplitOutputs | None = None) -> Evaluation:
    """Predict ``split`` with ``model`` under ``calibration``, on every rank (or score the ``outputs`` of
    ``predict_split`` given); score it. With ``options``: bootstrap intervals and the subgroup audit (every
    rank), the error gallery (rank 0)."""
    table = dm.split_table(split)
    if outputs is None:
        outputs = predict_split(trainer, model, dm, split, views)
    with torch.no_grad():
        loss = float(model.loss(outputs.mean_logits().float(), outputs.targets))
    ev = evaluation_from_outputs(outputs, table, model.class_names, calibration, split, views, {f"{split}/loss": loss},
                                 conformal, referral)
    if options is not None:
        gallery_model = model if trainer.is_global_zero else None
        ev = analyse(ev, options, gallery_model, dm.datasets[split], dm.eval_tf)
    return ev


def evaluation_from_outputs(outputs: SplitOutputs, table: pd.DataFrame, class_names: Sequence[str],
                            calibration: Calibration, split: str = "test",
                            views: Sequence[str] = ("identity",), extra: Mapping[str, float] | None = None,
                            conformal: Conformal | None = None, referral: ReferralRule | None = None) -> Evaluation:
    """The evaluation of ``outputs`` under ``calibration``: probabilities, metrics (with ``extra`` ones such as
    the loss), the ``conformal`` rule's sets, the ``referral`` rule's referrals and predictions, computed once."""
    raw, final = outputs.probs(None), outputs.probs(calibration)
    metrics = {**split_metrics(raw, final, outputs.targets, class_names, calibration, prefix=f"{split}/"),
               **(extra or {})}
    sets = conformal.sets(final) if conformal is not None else None
    if sets is not None:  # the values; analyse() adds their intervals
        metrics.update(set_metrics(sets, outputs.targets, class_names, resamples=0, prefix=f"{split}/"))
    decided = calibration.decide(final)
    conf, wrong = confidences(final, decided), (decided != outputs.targets).numpy()
    referred = torch.from_numpy(referral.refer(conf)) if referral is not None else None
    metrics.update(selective_metrics(conf, wrong, outputs.targets.numpy(), referral, resamples=0, prefix=f"{split}/"))
    return Evaluation(split=split, class_names=list(class_names), targets=outputs.targets, raw_probs=raw,
                      final_probs=final, calibration=calibration, metrics=metrics,
                      predictions=predictions_table(outputs, table, class_names, calibration, sets, referred),
                      views=list(views), rows=outputs.rows, table=table.iloc[outputs.rows.numpy()].reset_index(drop=True),
                      conformal=conformal, sets=sets, referral=referral, referred=referred)


def write_evaluation(ev: Evaluation, out_dir: Path, loggers: Sequence[Logger] = (), title: str = "Evaluation",
                     facts: Sequence[tuple[str, str]] = (), params: Mapping[str, Any] | None = None,
                     sections: Sequence[str] = (), figures: bool = True) -> dict[str, Path]:
    """Rank 0: metrics.json, predictions.csv, subgroups.csv, figures/, report.md in ``out_dir``; metrics and
    figures to loggers (``params``: the run's settings beside the metrics in TensorBoard's hparams view; the
    report's facts by default). A ``history.json`` in ``out_dir`` (a training run) adds the learning curves.
    ``sections``: Markdown the report gives after its metrics (the comparison of sites). A prediction-set
    coverage clearly below its target is logged as a warning and written beside the sets; their coverage and
    size against alpha go to ``conformal_curve.json``. ``figures=False`` (``evaluation.figures``) draws none."""
    out_dir = Path(out_dir)
    files = {"metrics": write_json(out_dir / "metrics.json", dict(ev.metrics)),
             "predictions": write_predictions(out_dir / "predictions.csv", ev.predictions)}
    if ev.subgroups is not None:
        files["subgroups_table"] = write_csv(out_dir / "subgroups.csv", ev.subgroups.table)
    curve = conformal_curve_of(ev)
    if curve is not None:
        files["conformal_curve"] = write_json(out_dir / "conformal_curve.json", curve)
    shortfalls = [] if ev.conformal is None else coverage_warnings(
        ev.metrics, f"{ev.split}/", ev.conformal.alpha, ev.class_names, per_class=ev.conformal.mondrian)
    for w in shortfalls:
        log.warning(w)
    drawn = figures
    figures = evaluation_figures(ev, curve) if drawn else {}
    curves = learning_curves_from(out_dir / "history.json") if drawn else None
    if curves is not None:
        figures["learning_curves"] = curves
    facts = [*facts, *([] if drawn else [("figures", "none drawn (evaluation.figures=false)")]), ("split", f"{ev.split} ({len(ev.targets)} images)"),
             ("calibration", ev.calibration.describe()),
             *([("prediction sets", ev.conformal.describe())] if ev.conformal is not None else []),
             ("referral", ev.referral.describe() if ev.referral is not None else "none (the model holds no referral "
                                                                                  "rule)"),
             ("test-time augmentation", ", ".join(ev.views) if len(ev.views) > 1 else "off")]
    try:
        paths = plots.save_figures(figures, out_dir / "figures")
        log_to_loggers(loggers, ev.metrics, figures, ev.split, params if params is not None else dict(facts))
    finally:
        plots.close_figures(figures)
    files["report"] = write_report(out_dir / "report.md", title, facts, ev.metrics, ev.class_names, paths,
                                   prefix=f"{ev.split}/", sections=[
                                       *sections,
                                       *conformal_lines(ev.metrics, ev.class_names,
                                                        ev.conformal.describe() if ev.conformal else None,
                                                        prefix=f"{ev.split}/", curve=curve, warnings=shortfalls),
                                       *selective_lines(ev.metrics, ev.referral.describe() if ev.referral else None,
                                                        prefix=f"{ev.split}/"),
                                       *subgroup_lines(ev.subgroups, ev.notes)])
    return {**files, **paths}


# the test metrics TensorBoard charts (each also _calibrated); every other metric is in its text table
TENSORBOARD_HEADLINE = ("accuracy", "balanced_accuracy", "f1_macro", "auroc", "pr_auc", "nll", "brier", "ece",
                        "loss", "sensitivity", "specificity")


def log_to_loggers(loggers: Sequence[Logger], metrics: Mapping[str, float], figures: dict[str, Any],
                   split: str, params: Mapping[str, Any]) -> None:
    """The metrics and figures to each logger. TensorBoard gets the headline metrics in its hparams view beside
    ``params``, every metric in one text table, and the figures; other loggers every metric."""
    for lg in loggers:
        if isinstance(lg, TensorBoardLogger):
            names = {f"{split}/{k}{s}" for k in TENSORBOARD_HEADLINE for s in ("", "_calibrated")}
            lg.log_hyperparams({"split": split, **params}, metrics={k: v for k, v in metrics.items() if k in names})
            lg.experiment.add_text(f"{split}/metrics", metrics_text(metrics), global_step=0)
            for name, fig in figures.items():
                lg.experiment.add_figure(f"{split}/{name}", fig, global_step=0, close=False)
        else:
            lg.log_metrics(dict(metrics), step=0)
        lg.save()


def metrics_text(metrics: Mapping[str, float]) -> str:
    """Every metric as one markdown table (value, interval), for TensorBoard's text view."""
    rows = ["| metric | value | interval |", "|---|---:|---|"]
    for k in sorted(metrics):
        if k.endswith(("_ci_low", "_ci_high")):
            continue
        lo, hi = metrics.get(f"{k}_ci_low"), metrics.get(f"{k}_ci_high")
        interval = f"[{lo:.4f}, {hi:.4f}]" if lo is not None and hi is not None else ""
        rows.append(f"| {k} | {metrics[k]:.4f} | {interval} |")
    return "\n".join(rows)
