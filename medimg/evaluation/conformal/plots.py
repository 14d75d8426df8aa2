"""The coverage/size-against-alpha figure of ``coverage.coverage_curve`` (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def coverage_figure(curve: Mapping[str, Sequence[float]], title: str = "conformal sets") -> Figure:
    """Left: test coverage (and the worst class's) against the target ``1 - alpha``, with the diagonal the
    guarantee asks for; right: the mean set size."""
    target = list(curve["target"])
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 4.0), layout="constrained")
    lo = min([*target, *curve["coverage"], *curve["worst_class_coverage"]])
    left.plot([lo, 1], [lo, 1], color="0.6", linestyle="--", label="target")
    left.plot(target, curve["coverage"], marker="o", label="coverage")
    left.plot(target, curve["worst_class_coverage"], marker=".", linestyle=":", label="worst class")
    left.set_xlabel("target coverage (1 - alpha)")
    left.set_ylabel("test coverage")
    left.legend(loc="lower right")
    right.plot(target, curve["set_size"], marker="o")
    right.set_xlabel("target coverage (1 - alpha)")
    right.set_ylabel("mean set size (classes)")
    fig.suptitle(title)
    return fig
