"""The phase loop: each phase of the stage is its own fit, starting from the best weights so far.

A phase sets which blocks train and at which learning rate, gets its own Trainer (epochs, early stopping, best
checkpoint), and trains on images or, for a frozen backbone with ``feature_cache``, on features computed
once. It must beat the validation score of the weights it starts from within its patience
(``callbacks.early_stopping.from_start``). When it ends, the best weights of the phases so far (its own, or
an earlier phase's it did not beat) are loaded and written as ``last.ckpt`` marked done, so a kill between
phases resumes with the next one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from medimg.config.runtime import Runtime
from medimg.config.training import PhaseSettings, TrainSettings
from medimg.data.datamodule import MedImageDataModule
from medimg.data.sampling import derive_seed
from medimg.inference import load_checkpoint
from medimg.models.classifier import ImageClassifier
from medimg.training.budget import phase_budget, world_size
from medimg.training.convex_head import fit_convex_head
from medimg.training.features import FeatureDataModule
from medimg.training.lr_find import find_lr
from medimg.training.phase_book import PhaseBook
from medimg.training.resume import Resume
from medimg.training.trainer import build_phase_trainer, is_rank_zero

log = logging.getLogger("medimg.train")


def load_weights(model: ImageClassifier, ckpt_path: str | Path) -> None:
    model.load_state_dict(load_checkpoint(ckpt_path)["state_dict"])


def phase_data(name: str, ph: PhaseSettings, model: ImageClassifier,
               dm: MedImageDataModule) -> MedImageDataModule | FeatureDataModule:
    """The images, or (``feature_cache: true`` on a frozen backbone) backbone features computed once."""
    if not ph.feature_cache:  # (a feature cache on trained blocks is refused before any data work)
        return dm
    log.info("phase %r trains the head on backbone features computed once (no augmentation; "
             "stage.phases.%s.feature_cache=false trains it on augmented images)", name, name)
    return FeatureDataModule(dm)


def fit_phase(s: TrainSettings, rt: Runtime, model: ImageClassifier, dm: MedImageDataModule, run_dir: Path,
              book: PhaseBook, name: str, ph: PhaseSettings, resume: Resume | None) -> None:
    """One phase trained by a Lightning fit (images, or cached features with ``head_fit: epochs``), from the
    model's current weights: the best so far, whose score its early stopping must beat. ``resume``: continue
    the phase from that mid-phase checkpoint (its rate is the one the phase started with)."""
    budget = phase_budget(ph, len(dm.datasets["train"]), s.dataset.batch_size, s.trainer,
                          world_size(s.trainer, rt.accelerator))
    data = phase_data(name, ph, model, dm)
    lr = ph.lr
    if lr == "find":
        lr = float(resume.state["phase"]["lr"]) if resume else find_lr(rt, model, data, name, ph, run_dir)
    model.set_phase(name, ph.train_blocks, lr, budget.epochs, budget.total_steps, ph.warmup_steps, ph.lr_decay)
    n_train = sum(p.numel() for p in model.trainable_parameters())
    log.info("phase %r: training %s + head (%d parameters) at lr %g; %s", name,
             model.phase["train_blocks"] or "nothing of the backbone", n_train, lr, budget.describe(ph))
    start = book.best(s.monitor_mode)
    trainer, best = build_phase_trainer(s, rt, book, name, budget.epochs, budget.patience_checks, run_dir,
                                        start_score=start[1] if start else None, val_every=budget.val_every)
    dm.train_seed = derive_seed(s.seed, "train", name)
    trainer.fit(model, datamodule=data, ckpt_path=resume.path if resume else None, weights_only=True)  # tensors and plain types only
    if best.best_model_path:
        score = best.best_model_score
        book.finish(name, best.best_model_path, float(score) if score is not None else None)
        load_weights(model, best.best_model_path)  # the model leaves the phase at its best


def run_phases(s: TrainSettings, rt: Runtime, model: ImageClassifier, dm: MedImageDataModule, run_dir: Path,
               book: PhaseBook, resume: Resume | None) -> PhaseBook:
    """Fit each phase of the stage in order (from where ``resume`` says); returns the book of finished phases."""
    phases = list(s.stage.phases.items())
    start = 0
    if resume is not None:
        book.done.update(resume.phases_done)
        start = resume.start
        if not resume.mid_phase:
            load_weights(model, resume.path)  # the best weights of the phase that ended
    for i, (name, ph) in enumerate(phases[start:], start):
        if ph.feature_cache and ph.head_fit == "convex":
            fit_convex_head(s, rt, model, dm, book, name, run_dir)
        else:
            mid_phase = resume if resume is not None and resume.mid_phase and i == start else None
            fit_phase(s, rt, model, dm, run_dir, book, name, ph, mid_phase)
        ended, so_far = book.done.get(name, {}), book.best(s.monitor_mode)
        if ended.get("best_score") is not None and so_far[0] != ended["best_path"]:  # the start was better
            log.info("phase %r did not beat %s %.4f of the weights it started from: those go on (%s)",
                     name, s.monitor, so_far[1], Path(so_far[0]).name)
            load_weights(model, so_far[0])  # the next phase (and the test) starts from the best so far
        if is_rank_zero() and s.callbacks.checkpoint.save_last:
            book.save_boundary(model, run_dir / "checkpoints" / "last.ckpt")
    return book
