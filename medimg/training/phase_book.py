"""Which phases of a stage are done, and what goes into every checkpoint besides the weights.

The bookkeeping of a run lives here, outside the LightningModule (which only learns): the finished phases
with their best checkpoint and score, written into each checkpoint's ``medimg`` entry by ``RunStateWriter``
(at every epoch end) and by ``PhaseBook.save_boundary`` (when a phase ends: its best weights, marked done).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from medimg.files import save_torch
from medimg.inference import checkpoint_entry
from medimg.models.classifier import ImageClassifier


@dataclass
class PhaseBook:
    class_names: list[str]
    settings: dict[str, Any]                       # the run's settings, to check a resume against
    done: dict[str, dict[str, Any]] = field(default_factory=dict)  # phase -> {best_path, best_score}

    def finish(self, phase: str, best_path: str, best_score: float | None) -> None:
        self.done[phase] = {"best_path": best_path, "best_score": best_score}

    def entry(self, model: ImageClassifier, phase_completed: bool) -> dict[str, Any]:
        return checkpoint_entry(model.phase, self.done, self.class_names, self.settings, phase_completed)

    def save_boundary(self, model: ImageClassifier, path: Path) -> None:
        """``path`` (last.ckpt) := the model as it leaves the phase that just ended (its best weights)."""
        save_torch({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                    "medimg": self.entry(model, phase_completed=True)}, path)

    def best(self, mode: str) -> tuple[str, float] | None:
        """The best checkpoint across finished phases by the monitored validation metric, and its score; on a
        tie the earlier phase (the later one did not improve on it)."""
        best: tuple[str, float] | None = None
        for v in self.done.values():  # in the order the phases finished
            score = v.get("best_score")
            if score is not None and (best is None or (score > best[1] if mode == "max" else score < best[1])):
                best = (v["best_path"], score)
        return best


class RunStateWriter(Callback):
    """Adds the run's ``medimg`` entry to every checkpoint Lightning writes during a phase."""

    def __init__(self, book: PhaseBook):
        self.book = book

    def on_save_checkpoint(self, trainer: Trainer, pl_module: LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["medimg"] = self.book.entry(pl_module, phase_completed=False)
