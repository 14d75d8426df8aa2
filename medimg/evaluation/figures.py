"""The standard figures of an evaluation (``evaluator.Evaluation``), by file name: confusion matrices, ROC and PR
curves, reliability before and after calibration, F1 per class, the conformal sets' coverage against alpha, the
risk-coverage curve, the subgroup audit and the error gallery."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from medimg.errors import ConfigError
from medimg.evaluation import plots
from medimg.evaluation.conformal import coverage_curve
from medimg.evaluation.conformal.plots import coverage_figure
from medimg.evaluation.error_gallery import gallery_figures
from medimg.evaluation.metrics import confusion_matrix
from medimg.evaluation.selective import risk_coverage
from medimg.evaluation.selective.plots import risk_coverage_figure

if TYPE_CHECKING:
    from medimg.evaluation.evaluator import Evaluation

log = logging.getLogger(__name__)


def conformal_curve_of(ev: Evaluation) -> dict[str, list[float]] | None:
    """Coverage and mean set size of ``ev``'s conformal rule refitted at each alpha of the grid, on this split;
    None without a rule, or one that holds no calibration scores (an ONNX model's) or too few for any alpha."""
    if ev.conformal is None or ev.conformal.calibration_scores is None:
        return None
    try:
        return coverage_curve(ev.conformal, ev.final_probs, ev.targets)
    except ConfigError as e:
        log.warning("no coverage curve over alpha: %s", e)
        return None


def evaluation_figures(ev: Evaluation, curve: Mapping[str, Sequence[float]] | None = None) -> dict[str, Any]:
    """The standard figures of an evaluation, by file name (without .png); ``curve``: ``conformal_curve_of``."""
    names, m, p = ev.class_names, ev.metrics, f"{ev.split}/"
    calibrated = ev.calibration.is_calibrated
    which = "calibrated" if calibrated else "uncalibrated"
    cm = confusion_matrix(ev.final_preds, ev.targets, len(names))
    threshold = ev.calibration.threshold
    figs = {
        "confusion_matrix": plots.confusion_matrix_figure(cm, names, False, f"Confusion matrix ({ev.split}, {which})"),
        "confusion_matrix_normalized": plots.confusion_matrix_figure(
            cm, names, True, f"Confusion matrix, row-normalised ({ev.split}, {which})"),
        "roc_curves": plots.roc_figure(ev.final_probs, ev.targets, names, threshold,
                                       title=f"ROC curves ({ev.split}, {which})"),
        "pr_curves": plots.pr_figure(ev.final_probs, ev.targets, names,
                                     title=f"Precision-recall curves ({ev.split}, {which})"),
    }
    panels = [("uncalibrated", ev.raw_probs)]
    eces, pos = [m.get(p + "ece")], [m.get(p + "ece_positive")]
    if calibrated:
        panels.append((f"calibrated ({ev.calibration.method})", ev.final_probs))
        eces.append(m.get(p + "ece_calibrated"))
        pos.append(m.get(p + "ece_positive_calibrated"))
    figs["reliability"] = plots.reliability_figure(panels, ev.targets, eces, pos, names)
    series = [("uncalibrated", [m.get(f"{p}per_class/{c}/f1", 0.0) for c in names])]
    if calibrated:
        series.append(("calibrated", [m.get(f"{p}per_class/{c}/f1_calibrated", 0.0) for c in names]))
    figs["per_class_f1"] = plots.per_class_f1_figure(names, series)
    if curve is not None:
        figs["conformal_coverage"] = coverage_figure(curve, f"Conformal sets ({ev.split}) refitted at each alpha")
    if f"{p}selective_aurc" in m:
        figs["risk_coverage"] = risk_coverage_of(ev)
    if ev.subgroups is not None and len(ev.subgroups.table):
        figs["subgroups"] = plots.subgroup_figure(ev.subgroups)
    if ev.gallery is not None:
        figs.update(gallery_figures(ev.gallery, names))
    return figs


def risk_coverage_of(ev: Evaluation):
    """The risk-coverage figure of ``ev`` (with its referral rule's operating point and target)."""
    p, rule = f"{ev.split}/", ev.referral
    title = f"Risk-coverage ({ev.split}), AURC {ev.metrics[f'{p}selective_aurc']:.4f}"
    point = None
    if rule is not None and f"{p}accuracy_not_referred" in ev.metrics:
        point = (1 - ev.metrics[f"{p}referred_share"], 1 - ev.metrics[f"{p}accuracy_not_referred"])
    return risk_coverage_figure(risk_coverage(ev.confidence, ev.wrong), title, rule.target if rule else None, point)
