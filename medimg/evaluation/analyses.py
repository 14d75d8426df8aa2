"""What an evaluation adds beyond the metrics: bootstrap intervals, the subgroup audit, the error gallery.

The ``evaluation`` settings (conf/evaluation/, read with the command's config) and the data set's subgroup
columns make an ``EvaluationOptions``; ``analyse`` returns an ``Evaluation`` with:

* ``<split>/<metric>_ci_low`` / ``_ci_high`` in its metrics (``medimg.evaluation.bootstrap``; the conformal
  sets' coverage and size, AURC and the referral metrics by their own modules' resampling);
* ``subgroups``: the audit of ``dataset.subgroup_columns`` (``medimg.evaluation.subgroups``), on the final
  (calibrated, thresholded) predictions;
* ``gallery``: per class the most confident mistakes and least confident correct calls with their CAMs
  (``medimg.evaluation.error_gallery``; needs the model and the split's dataset, so not for fold ensembles).

A subgroup audit the data cannot support (a column it lacks, an empty age band) does not stop an evaluation
that comes at the end of a training run: its message is logged as an error and written into the report.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torchvision.transforms import v2

from medimg.config.evaluation import EvaluationSettings
from medimg.errors import UserError
from medimg.evaluation.bootstrap import interval_metrics
from medimg.evaluation.conformal import set_metrics
from medimg.evaluation.error_gallery import Gallery, gallery_pictures, select_gallery
from medimg.evaluation.selective import selective_metrics
from medimg.evaluation.subgroups import SubgroupAudit, subgroup_audit

if TYPE_CHECKING:
    from medimg.evaluation.evaluator import Evaluation

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class EvaluationOptions:
    """A command's ``evaluation`` settings (read and checked with the rest of its config) and the data set's
    ``subgroup_columns`` / ``subgroup_bins``."""

    settings: EvaluationSettings
    subgroup_columns: tuple[str, ...]
    subgroup_bins: Mapping[str, Sequence[float]]

    @property
    def bootstrap(self) -> dict[str, Any]:
        s = self.settings
        return {"bootstrap_resamples": s.bootstrap_resamples, "interval_level": s.interval_level,
                "bootstrap_seed": s.bootstrap_seed}


def evaluation_options(settings: EvaluationSettings, subgroup_columns: Sequence[str] | None,
                       subgroup_bins: Mapping[str, Sequence[float]] | None) -> EvaluationOptions:
    return EvaluationOptions(settings, tuple(subgroup_columns or ()), dict(subgroup_bins or {}))


def interval_entries(ev: Evaluation, options: EvaluationOptions) -> dict[str, float]:
    b = options.bootstrap
    out = interval_metrics(ev.raw_probs, ev.final_probs, ev.targets, ev.calibration, b, prefix=f"{ev.split}/")
    if ev.sets is not None and b["bootstrap_resamples"] > 0:  # coverage and set size with their intervals
        out.update(set_metrics(ev.sets, ev.targets, ev.class_names, b["bootstrap_resamples"], b["interval_level"],
                               b["bootstrap_seed"], prefix=f"{ev.split}/"))
    if f"{ev.split}/selective_aurc" in ev.metrics and b["bootstrap_resamples"] > 0:  # AURC, referrals: intervals
        out.update(selective_metrics(ev.confidence, ev.wrong, ev.targets.cpu().numpy(), ev.referral,
                                     b["bootstrap_resamples"], b["interval_level"], b["bootstrap_seed"],
                                     prefix=f"{ev.split}/"))
    return out


def subgroup_result(ev: Evaluation, options: EvaluationOptions) -> tuple[SubgroupAudit | None, list[str]]:
    """The subgroup audit of ``ev`` (None without subgroup columns), or None and the note that says why not."""
    if not options.subgroup_columns:
        return None, []
    if ev.table is None:
        return None, ["Subgroup audit not done: this evaluation carries no data table."]
    try:
        return subgroup_audit(
            ev.final_probs, ev.targets, ev.table, ev.class_names, options.subgroup_columns, options.subgroup_bins,
            options.settings.subgroup_metrics, options.bootstrap, options.settings.subgroup_min_images,
            threshold=ev.calibration.threshold, split=ev.split), []
    except UserError as e:
        log.error("subgroup audit not done: %s", e)
        return None, [f"Subgroup audit not done: {e}"]


def normalisation_of(eval_tf) -> tuple[list[float], list[float]]:
    """The mean and std of the evaluation transform's Normalize step (to show images as they were)."""
    for t in getattr(eval_tf, "transforms", []):
        if isinstance(t, v2.Normalize):
            return list(t.mean), list(t.std)
    raise ValueError("the evaluation transform has no Normalize step")


def gallery_of(ev: Evaluation, model, dataset, eval_tf, options: EvaluationOptions) -> Gallery | None:
    """The error gallery of ``ev`` (images read from ``dataset`` by the evaluation's row indices), or None."""
    if options.settings.gallery_per_class <= 0 or ev.rows is None:
        return None
    preds = ev.final_preds
    selection = select_gallery(ev.final_probs, ev.targets, preds, options.settings.gallery_per_class)
    positions = [p for kind in selection.values() for chosen in kind.values() for p in chosen]
    mean, std = normalisation_of(eval_tf)
    pictures = gallery_pictures(model, dataset, ev.rows, positions, preds, mean, std, options.settings.gallery_method,
                                options.settings.gallery_layer)
    return Gallery(selection=selection, probs=ev.final_probs, targets=ev.targets, preds=preds,
                   pictures=pictures, method=options.settings.gallery_method)


def analyse(ev: Evaluation, options: EvaluationOptions, model=None, dataset=None, eval_tf=None) -> Evaluation:
    """``ev`` with its intervals and subgroups, and the gallery when ``model``, ``dataset`` and ``eval_tf`` are
    given: a new (frozen) evaluation; ``ev`` is left as it was."""
    subgroups, notes = subgroup_result(ev, options)
    gallery = None
    if model is not None and dataset is not None and eval_tf is not None:
        gallery = gallery_of(ev, model, dataset, eval_tf, options)
    return ev.with_analyses(interval_entries(ev, options), subgroups, gallery, notes)
