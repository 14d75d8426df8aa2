"""The risk-coverage figure of ``curve.risk_coverage`` (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def risk_coverage_figure(curve: Mapping[str, np.ndarray], title: str, target: float | None = None,
                         point: tuple[float, float] | None = None) -> Figure:
    """Risk (1 - accuracy of the images kept) against coverage (the share kept, most confident first), the
    curve of a perfect ranking dashed, the risk the referral ``target`` allows dotted and the rule's operating
    ``point`` (coverage, risk) marked."""
    fig, ax = plt.subplots(figsize=(5.5, 4.2), layout="constrained")
    ax.plot(curve["coverage"], curve["risk"], label="model (most confident first)")
    ax.plot(curve["coverage"], curve["optimal"], color="0.6", linestyle="--", label="perfect ranking")
    if target is not None:
        ax.axhline(1 - target, color="tab:red", linestyle=":", label=f"risk the target allows ({1 - target:.3g})")
    if point is not None:
        ax.plot(*point, marker="o", color="tab:red", linestyle="none",
                label=f"referral: {point[0]:.1%} kept, risk {point[1]:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("coverage (share of images not referred)")
    ax.set_ylabel("risk (1 - accuracy of those images)")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="best", fontsize=8)
    return fig
