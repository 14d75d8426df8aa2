"""``stage.phases.<phase>.lr: find``: Lightning's learning-rate finder before the phase trains.

A throwaway Trainer (no checkpoints, loggers or medimg callbacks) runs Lightning's ``Tuner.lr_find`` on the
phase's data with the phase's blocks trainable; the model's weights are restored afterwards (Lightning does
that). The curve goes to ``<run>/figures/lr_find_<phase>.png`` and the suggested rate into the log; the phase then
trains at it. A resumed phase keeps the rate it started with (stored in its checkpoint), it does not search again.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
from lightning.pytorch.tuner import Tuner

from medimg.config.runtime import Runtime
from medimg.config.training import PhaseSettings
from medimg.errors import UserError
from medimg.files import save_figure
from medimg.models.classifier import ImageClassifier

log = logging.getLogger("medimg.train")


def find_lr(rt: Runtime, model: ImageClassifier, data: L.LightningDataModule, name: str, ph: PhaseSettings,
            run_dir: Path) -> float:
    model.set_phase(name, ph.train_blocks, 1e-3, 1, 1, 0, ph.lr_decay)
    trainer = L.Trainer(accelerator=rt.accelerator, precision=rt.precision, devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=str(run_dir / "checkpoints"))
    finder = Tuner(trainer).lr_find(model, datamodule=data, min_lr=1e-7, max_lr=1.0, num_training=100,
                                    update_attr=False)
    suggestion = finder.suggestion() if finder is not None else None
    if suggestion is None:
        raise UserError(f"the learning-rate finder found no rate for phase {name!r} (too few training steps?); "
                        f"set stage.phases.{name}.lr to a number")
    fig = finder.plot(suggest=True)
    save_figure(fig, run_dir / "figures" / f"lr_find_{name}.png", dpi=100)
    import matplotlib.pyplot as plt

    plt.close(fig)
    log.info("phase %r: learning-rate finder suggests lr %g (curve: figures/lr_find_%s.png)", name, suggestion, name)
    return float(suggestion)

