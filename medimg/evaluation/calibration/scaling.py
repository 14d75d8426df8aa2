"""Maximum-likelihood fits of the logit-scaling calibrations (L-BFGS on the validation NLL).

Each function returns the fitted parameters only; ``medimg.evaluation.calibration`` turns them into a state
dict and keeps the uncalibrated model when a fit does not lower the validation NLL. All four are affine maps of
the logits followed by a softmax:

* temperature scaling (Guo et al. 2017): ``softmax(z / T)``;
* Platt scaling, binary: ``P(class 1) = sigmoid(a (z1 - z0) + b)``;
* bias-corrected temperature scaling, BCTS (Alexandari et al. 2020, "Maximum likelihood with bias-corrected
  calibration is hard-to-beat at label shift adaptation"): ``softmax(z / T + b)``, one temperature plus a
  bias per class. The bias absorbs a shift of the class priors, such as the one class-weighted training puts
  into the logits (a weight w_c adds about log w_c to class c's logit);
* vector scaling (Guo et al. 2017): ``softmax(w * z + b)``, a scale and a bias per class.

Temperatures are fitted as log T (always positive). Biases are returned centred (mean 0): a constant added to
every bias leaves the softmax unchanged, and centring makes the stored state unique.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _minimise(params: list[torch.Tensor], loss_fn: Callable[[], torch.Tensor], max_iter: int) -> None:
    """L-BFGS with a strong-Wolfe line search on ``loss_fn`` over ``params`` (updated in place)."""
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss

    opt.step(closure)


def _inputs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return logits.detach().double().cpu(), targets.detach().long().cpu()


def lbfgs_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int) -> float:
    """The T minimising the NLL of ``softmax(logits / T)``, clamped to [0.01, 100]."""
    z, y = _inputs(logits, targets)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    _minimise([log_t], lambda: F.cross_entropy(z / log_t.exp(), y), max_iter)
    return float(log_t.detach().exp().clamp(1e-2, 1e2))


def lbfgs_platt(logits: torch.Tensor, targets: torch.Tensor, max_iter: int) -> tuple[float, float]:
    """Binary: (a, b) minimising the NLL of ``sigmoid(a (z1 - z0) + b)``, starting at (1, 0)."""
    z, y = _inputs(logits, targets)
    margin = z[:, 1] - z[:, 0]
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    _minimise([ab], lambda: F.binary_cross_entropy_with_logits(ab[0] * margin + ab[1], y.double()), max_iter)
    a, b = (float(v) for v in ab.detach())
    return a, b


def lbfgs_bcts(logits: torch.Tensor, targets: torch.Tensor, max_iter: int) -> tuple[float, list[float]]:
    """(T, bias) minimising the NLL of ``softmax(logits / T + bias)``, starting at T = 1, bias = 0."""
    z, y = _inputs(logits, targets)
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    _minimise([log_t, bias], lambda: F.cross_entropy(z / log_t.exp() + bias, y), max_iter)
    t = float(log_t.detach().exp().clamp(1e-2, 1e2))
    return t, _centred(bias)


def lbfgs_vector(logits: torch.Tensor, targets: torch.Tensor, max_iter: int) -> tuple[list[float], list[float]]:
    """(scale, bias) minimising the NLL of ``softmax(scale * logits + bias)``, starting at scale 1, bias 0."""
    z, y = _inputs(logits, targets)
    scale = torch.ones(z.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(z.shape[1], dtype=torch.float64, requires_grad=True)
    _minimise([scale, bias], lambda: F.cross_entropy(z * scale + bias, y), max_iter)
    return [float(v) for v in scale.detach()], _centred(bias)


def _centred(bias: torch.Tensor) -> list[float]:
    b = bias.detach()
    return [float(v) for v in b - b.mean()]
