"""Writing results: JSON files written atomically, and the printed metrics table."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table


def write_json(path: Path, data: Any) -> None:
    """Write ``data`` as JSON via a temporary file, so a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def print_metrics(metrics: dict[str, float], title: str = "test metrics") -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)
