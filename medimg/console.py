"""Console hygiene for the command-line entry points: keep third-party chatter out of the run's output.

A run's console shows medimg's own log (data, phases, the network's blocks, metrics) and Lightning's progress
bar; Lightning's hardware boilerplate (``GPU available: False ...``), its tips, and deprecation warnings that
libraries raise about each other stay out.
"""

from __future__ import annotations

import logging
import warnings

BOILERPLATE = ("Tip:", "GPU available:", "TPU available:", "HPU available:", "IPU available:",
               "Trainer already configured with model summary", "`Trainer(limit_", "`Trainer(val_check_interval",
               "Using bfloat16 Automatic Mixed Precision", "Using 16bit Automatic Mixed Precision",
               "LOCAL_RANK:", "You are using a CUDA device", "💡")


class _DropBoilerplate(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not any(b in msg for b in BOILERPLATE)


def quiet_third_party() -> None:
    """Drop Lightning's boilerplate and tips, and deprecation warnings that libraries raise about each other."""
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero",
                 "lightning.pytorch.accelerators.cuda"):
        logging.getLogger(name).addFilter(_DropBoilerplate())
    warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated")
    warnings.filterwarnings("ignore", message=r".*is not supported by the model summary.*")
    warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode at the start of training.*")  # frozen blocks
    warnings.filterwarnings("ignore", message=r".*Checkpoint directory .* exists and is not empty.*")  # one per phase


def print_metrics(metrics: dict[str, float], title: str = "test metrics") -> None:
    """An evaluation's metrics as a table on the console (the files are written by the evaluation itself)."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k in sorted(metrics):
        table.add_row(k, f"{metrics[k]:.4f}")
    Console().print(table)
