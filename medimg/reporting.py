"""The printed metrics table of an evaluation (files are written through ``medimg.files``)."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from medimg.files import write_json  # noqa: F401  (kept importable from here for evaluation modules)


def print_metrics(metrics: dict[str, float], title: str = "test metrics") -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)
