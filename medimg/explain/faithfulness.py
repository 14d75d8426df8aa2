"""Is a saliency map faithful to the model? ROAD (Rong et al. 2022) through ``pytorch_grad_cam``.

ROAD removes a share of the pixels (noisy linear imputation, so the removal itself leaks no shape) and
measures how the softmax probability of the target class changes:

- MoRF (most relevant first): remove the pixels the map ranks highest. A faithful map makes the
  probability drop: more negative is better.
- LeRF (least relevant first): remove the pixels the map ranks lowest. The probability should hold:
  closer to zero (or positive) is better.
- combined = (LeRF - MoRF) / 2, averaged over the removal percentiles: higher is better, 0 is what a map
  that carries no information about the model scores on average.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pytorch_grad_cam.metrics.road import ROADLeastRelevantFirstAverage, ROADMostRelevantFirstAverage
from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget
from torch import nn

from medimg.explain.gradcam import preserved_state

DEFAULT_PERCENTILES = (20, 50, 80)


def road_scores(
    model: nn.Module,
    images: torch.Tensor,
    cams: np.ndarray,
    targets: Sequence[int],
    percentiles: Sequence[int] = DEFAULT_PERCENTILES,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-image ROAD scores: ``{"morf", "lerf", "combined"}``, each an array of length B.

    ``images`` are normalised ``(B, 3, H, W)``, ``cams`` ``(B, H, W)`` in [0, 1], ``targets`` class indices.
    """
    if len(images) != len(cams) or len(images) != len(targets):
        raise ValueError(f"road_scores needs one cam and one target per image: {len(images)} images, "
                         f"{len(cams)} cams, {len(targets)} targets")
    device = next(model.parameters()).device
    tgt = [ClassifierOutputSoftmaxTarget(int(t)) for t in targets]
    x = images.detach().float().cpu()
    cams = np.asarray(cams, dtype=np.float32)
    with preserved_state(model), torch.no_grad():
        model.eval()
        gen_state = torch.random.get_rng_state()
        torch.manual_seed(seed)  # the imputer adds noise
        try:
            wrapped = _OnDevice(model, device)
            morf = ROADMostRelevantFirstAverage(list(percentiles))(x, cams, tgt, wrapped)
            lerf = ROADLeastRelevantFirstAverage(list(percentiles))(x, cams, tgt, wrapped)
        finally:
            torch.random.set_rng_state(gen_state)
    morf, lerf = np.asarray(morf, np.float64).reshape(-1), np.asarray(lerf, np.float64).reshape(-1)
    return {"morf": morf, "lerf": lerf, "combined": (lerf - morf) / 2}


class _OnDevice(nn.Module):
    """Runs the model on its device and hands the outputs back on the CPU (the imputer works on the CPU)."""

    def __init__(self, model: nn.Module, device: torch.device):
        super().__init__()
        self.model, self.device = model, device

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.to(self.device)).float().cpu()
