"""The head of a frozen backbone solved to convergence: multinomial logistic regression on cached features.

On fixed features the head (a linear layer) minimises a convex objective,

    sum_i w_{y_i} * CE(W f_i + b, y_i) / sum_i w_{y_i}  +  l2 / 2 * ||W||^2      (the bias is not penalised)

with ``w`` the class weights (1 without them). Full-batch L-BFGS (float64) solves it for each L2 strength of
``optim.probe_l2``, from the strongest to the weakest, each warm-started from the previous solution; the
strength with the lowest validation loss (the same class-weighted cross-entropy) wins. This is scikit-learn's
``LogisticRegression(C=1 / (l2 * sum_i w_{y_i}))`` with class weights as sample weights; the tests check they
agree. Seconds, whatever the batch size and epochs.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HeadSolution:
    weight: torch.Tensor       # (C, D) float64
    bias: torch.Tensor         # (C,) float64
    l2: float                  # the chosen strength
    val_losses: dict[float, float]  # validation loss of every strength tried


def _objective(w: torch.Tensor, b: torch.Tensor, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None,
               l2: float) -> torch.Tensor:
    return F.cross_entropy(x @ w.T + b, y, weight=weight) + 0.5 * l2 * (w * w).sum()


def fit_l2(x: torch.Tensor, y: torch.Tensor, class_weight: torch.Tensor | None, l2: float, max_iter: int,
           start: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The minimiser for one L2 strength (float64 tensors), from ``start``."""
    w, b = (t.detach().clone().requires_grad_(True) for t in start)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-9, tolerance_change=1e-12,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = _objective(w, b, x, y, class_weight, l2)
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def solve_head(train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
               num_classes: int, class_weight: torch.Tensor | None, l2_grid: list[float],
               max_iter: int) -> HeadSolution:
    """Solve for each strength of ``l2_grid``; keep the one with the lowest validation loss."""
    x, vx = train_x.double(), val_x.double()
    cw = class_weight.double() if class_weight is not None else None
    w = torch.zeros(num_classes, x.shape[1], dtype=torch.float64)
    b = torch.zeros(num_classes, dtype=torch.float64)
    best, losses = None, {}
    for l2 in sorted(l2_grid, reverse=True):  # strong to weak: each solution starts the next
        w, b = fit_l2(x, train_y, cw, float(l2), max_iter, (w, b))
        with torch.no_grad():
            losses[float(l2)] = float(F.cross_entropy(vx @ w.T + b, val_y, weight=cw))
        if best is None or losses[float(l2)] < best[0]:
            best = (losses[float(l2)], float(l2), w.clone(), b.clone())
    _, l2, w, b = best
    log.info("convex head: validation loss per L2 strength %s -> %g",
             ", ".join(f"{k:g}: {v:.4f}" for k, v in sorted(losses.items())), l2)
    return HeadSolution(w, b, l2, losses)
