"""``calibration=auto``, and fitting any method by name: choose the calibration method by cross-validated NLL on the validation split.

Every candidate is fitted on k-1 folds of the validation split and scored on the held-out fold; its score is
the NLL over all held-out images (each validation image is scored once, by a fit that did not see it). The
candidate with the lowest score wins and is refitted on the whole validation split. Choosing by held-out NLL
rather than by the NLL on the images the fit saw keeps a method with more parameters (vector scaling,
isotonic regression) from winning by fitting noise on a small validation split.

Folds are stratified by class (scikit-learn ``StratifiedKFold``, shuffled with ``seed``); with fewer images in
the rarest class than folds, the number of folds drops to that count (at least 2), and below that the folds
are unstratified.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import KFold, StratifiedKFold

from medimg.errors import ConfigError
from medimg.evaluation.calibration.base import Calibration
from medimg.names import CALIBRATION_FITS, CALIBRATION_METHODS

log = logging.getLogger(__name__)

SELECTABLE = CALIBRATION_FITS


def fold_indices(targets: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(fit, held-out) index pairs of the validation split; stratified by class where every class allows it."""
    if folds < 2:
        raise ConfigError(f"calibration.folds={folds}: cross-validation needs at least 2 folds")
    if len(targets) < 4:
        raise ConfigError(f"calibration=auto needs at least 4 validation images to cross-validate; there are "
                          f"{len(targets)}. Choose a single method (calibration=temperature) or a larger split.")
    k = min(folds, len(targets) // 2)
    counts = np.bincount(targets)
    smallest = int(counts[counts > 0].min())
    if smallest >= 2:
        splitter = StratifiedKFold(n_splits=min(k, smallest), shuffle=True, random_state=seed)
        return list(splitter.split(np.zeros(len(targets)), targets))
    return list(KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(targets))))


def held_out_nll(method: str, logits: torch.Tensor, targets: torch.Tensor,
                 folds: list[tuple[np.ndarray, np.ndarray]], max_iter: int) -> float:
    """The NLL of ``method`` over all held-out images, each fold fitted on the others."""
    eps = float(np.finfo(np.float64).eps)
    total = 0.0
    for fit_idx, out_idx in folds:
        fi, oi = torch.as_tensor(fit_idx), torch.as_tensor(out_idx)
        fitted = fit_method(method, logits[fi], targets[fi], max_iter)
        p = fitted.probs(logits[oi].double()).gather(1, targets[oi].long().view(-1, 1))
        total += float(-p.clamp_min(eps).log().sum())
    return total / sum(len(o) for _, o in folds)


def fit_auto(logits: torch.Tensor, targets: torch.Tensor, candidates: list[str], folds: int, seed: int,
             max_iter: int) -> Calibration:
    """The candidate with the lowest cross-validated NLL, refitted on all of ``logits``; the state records
    every candidate's score under ``selection``. Platt scaling is skipped for multiclass tasks."""
    unknown = sorted(set(candidates) - set(SELECTABLE))
    if unknown:
        raise ConfigError(f"calibration.candidates has unknown methods {unknown}; choose among {list(SELECTABLE)}")
    z, y = logits.detach().double().cpu(), targets.detach().long().cpu()
    usable = [m for m in dict.fromkeys(candidates) if not (m == "platt" and z.shape[1] != 2)]
    if not usable:
        raise ConfigError(f"calibration.candidates={candidates} leaves no method for a {z.shape[1]}-class task")
    split = fold_indices(y.numpy(), folds, seed)
    scores = {m: held_out_nll(m, z, y, split, max_iter) for m in usable}
    finite = {m: s for m, s in scores.items() if math.isfinite(s)}
    winner = min(finite or scores, key=lambda m: (finite or scores)[m])
    log.info("calibration=auto: %d-fold cross-validated NLL %s -> %s", len(split),
             ", ".join(f"{m} {s:.4f}" for m, s in scores.items()), winner)
    return fit_method(winner, z, y, max_iter).replace(selection={
        "rule": "lowest cross-validated NLL on the validation split", "folds": len(split), "seed": int(seed),
        "cv_nll": scores})


AUTO_KEYS = ("candidates", "folds", "seed")


def fit_method(method: str, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> Calibration:
    """Fit one method (a name of ``names.CALIBRATION_FITS``) on validation logits and targets."""
    if len(targets) == 0:
        raise ValueError("cannot fit a calibration on an empty validation split")
    cls = Calibration.registry.get(method)
    if cls is None:
        raise ConfigError(f"unknown calibration.method={method!r}; choose one of {CALIBRATION_METHODS}")
    return cls.fit(logits, targets, max_iter)


def fit_calibration(method: str, logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100,
                    selection: dict[str, Any] | None = None) -> Calibration:
    """Fit ``method`` (a name of ``names.CALIBRATION_METHODS``) on validation logits and targets. ``auto`` needs
    ``selection``: the ``candidates``, ``folds`` and ``seed`` keys of ``conf/calibration/auto.yaml``."""
    if method != "auto":
        return fit_method(method, logits, targets, max_iter)
    missing = [k for k in AUTO_KEYS if k not in (selection or {})]
    if missing:
        raise ConfigError(f"calibration.method=auto needs the keys {missing} (see conf/calibration/auto.yaml)")
    if len(targets) == 0:
        raise ValueError("cannot fit a calibration on an empty validation split")
    return fit_auto(logits, targets, list(selection["candidates"]), int(selection["folds"]),
                    int(selection["seed"]), max_iter)
