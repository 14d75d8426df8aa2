"""The files of a robustness evaluation: table, summary, figures and a short report, in their own folder."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from medimg.evaluation.report import fmt  # noqa: E402
from medimg.files import save_figure, write_csv, write_json, write_text  # noqa: E402


def robustness_figure(table: pd.DataFrame, metric: str) -> Figure:
    """``metric`` against severity, one line per corruption, starting from the clean value at severity 0."""
    clean = float(table.loc[table["corruption"] == "none", metric].iloc[0])
    fig, ax = plt.subplots(figsize=(7.0, 4.6), layout="constrained")
    for name, g in table[table["corruption"] != "none"].groupby("corruption", sort=False):
        g = g.sort_values("severity")
        ax.plot([0, *g["severity"]], [clean, *g[metric]], marker="o", lw=1.4, label=name.replace("_", " "))
    ax.axhline(clean, color="grey", ls="--", lw=0.8, label=f"clean ({clean:.3f})")
    ax.set(xlabel="severity (0 = clean)", ylabel=metric, title=f"{metric} under corruption")
    ax.set_xticks(range(0, int(table["severity"].max()) + 1))
    ax.legend(fontsize=8)
    return fig


def examples_figure(image_at: Callable[[str, int], np.ndarray], corruptions: Sequence[str],
                    severities: Sequence[int]) -> Figure:
    """One image under each corruption (rows) and severity (columns, the clean image first)."""
    cols = [0, *[s for s in severities if s > 0]]
    fig, axes = plt.subplots(len(corruptions), len(cols), figsize=(1.6 * len(cols), 1.7 * len(corruptions)),
                             layout="constrained", squeeze=False)
    for r, name in enumerate(corruptions):
        for j, s in enumerate(cols):
            ax = axes[r, j]
            ax.imshow(image_at(name, s))
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title("clean" if s == 0 else f"severity {s}", fontsize=8)
            if j == 0:
                ax.set_ylabel(name.replace("_", " "), fontsize=8)
    return fig


def robustness_report(table: pd.DataFrame, summary: dict[str, Any]) -> list[str]:
    """Markdown lines: the facts, the metric per corruption and severity, the summary numbers, the figures."""
    metric = summary["metric"]
    pivot = table[table["corruption"] != "none"].pivot(index="corruption", columns="severity", values=metric)
    lines = ["# Robustness under corruption", "",
             f"- **split**: {summary['split']} ({summary['images']} images), corruption seed {summary['seed']}",
             f"- **metric**: {metric} of the calibrated probabilities (clean: {fmt(summary['clean'])})",
             f"- **definitions**: {summary['definition']}", "",
             "| corruption | " + " | ".join(f"severity {s}" for s in pivot.columns) + " | corruption error |",
             "|---|" + "---:|" * (len(pivot.columns) + 1)]
    for name, row in pivot.iterrows():
        lines.append(f"| {name} | " + " | ".join(fmt(v) for v in row) +
                     f" | {fmt(summary['corruption_error'].get(name))} |")
    rel = summary["relative_corruption_error"]
    lines += ["", f"- **mean corruption error**: {fmt(summary['mean_corruption_error'])}",
              f"- **relative corruption error** (mean corruption error / clean error): "
              f"{fmt(rel) if rel is not None else 'undefined (clean error 0)'}",
              f"- **mean degradation** ({metric} clean minus corrupted): {fmt(summary['degradation'])}", "",
              "All metrics per corruption and severity are in `robustness.csv`.", "",
              "![metric against severity](figures/robustness.png)", "",
              "![one image under each corruption](figures/corruption_examples.png)", ""]
    return lines


def write_robustness(out_dir: Path, table: pd.DataFrame, summary: dict[str, Any],
                     image_at: Callable[[str, int], np.ndarray], corruptions: Sequence[str],
                     severities: Sequence[int]) -> dict[str, Path]:
    """``robustness.csv``, ``robustness.json``, ``figures/robustness.png``, ``figures/corruption_examples.png``
    and ``report.md`` in ``out_dir``."""
    paths = {"table": write_csv(out_dir / "robustness.csv", table),
             "summary": write_json(out_dir / "robustness.json", summary)}
    for name, fig in (("robustness", robustness_figure(table, summary["metric"])),
                      ("corruption_examples", examples_figure(image_at, corruptions, severities))):
        try:
            paths[name] = save_figure(fig, out_dir / "figures" / f"{name}.png", dpi=110)
        finally:
            plt.close(fig)
    paths["report"] = write_text(out_dir / "report.md", "\n".join(robustness_report(table, summary)))
    return paths
