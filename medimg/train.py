"""Train a classifier: ``python -m medimg.train [group=option ...] [key=value ...]``.

Reads top to bottom: seed; build the data module and the model from the config; run the stage's phases
(each a fit with its own epochs, early stopping and best checkpoint, starting from the previous phase's
best weights); calibrate the best checkpoint on validation and store the calibration in it; evaluate the
test split (``metrics.json``, ``predictions.csv``, ``figures/``, ``report.md``); return ``optimized_metric`` for sweepers.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from medimg.checkpoints import read_medimg_state
from medimg.console import quiet_third_party
from medimg.data.datamodule import MedImageDataModule
from medimg.data.features import FeatureDataModule
from medimg.evaluation.calibration import save_with_calibration
from medimg.evaluation.evaluator import Evaluation, evaluate_split, fit_on_validation, write_evaluation
from medimg.hardware import resolve_accelerator, resolve_channels_last, resolve_precision
from medimg.models.classifier import ImageClassifier
from medimg.reporting import print_metrics, write_json
from medimg.run_info import run_info
from medimg.trainer_builder import build_eval_trainer, build_phase_trainer, phase_epochs

CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
log = logging.getLogger("medimg.train")


def build_model(cfg: dict[str, Any], dm: MedImageDataModule) -> ImageClassifier:
    accelerator = resolve_accelerator(cfg["trainer"]["accelerator"])
    precision = resolve_precision(cfg["trainer"]["precision"], accelerator)
    b, m = cfg["backbone"], cfg["model"]
    model = ImageClassifier(
        backbone=b["name"], class_names=dm.class_names, weights=b.get("weights"), dropout=b.get("dropout", 0.2),
        class_weights=dm.class_weights().tolist() if cfg["dataset"].get("class_weights", True) else None,
        optimizer=m["optimizer"], weight_decay=m["weight_decay"], momentum=m.get("momentum", 0.9),
        scheduler=m["scheduler"], step_size=m.get("step_size", 5), gamma=m.get("gamma", 0.1),
        label_smoothing=m.get("label_smoothing", 0.0), nan_check_every=int(m.get("nan_check_every", 20)),
        step_loss_in_bar=_resolve_auto(m.get("step_loss_in_bar", "auto"), accelerator == "cpu"),
        channels_last=resolve_channels_last(m.get("channels_last", "auto"), accelerator, precision),
        preprocess=eval_preprocessing(cfg["dataset"]),
    )
    if m.get("compile", False):
        if accelerator == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
            raise RuntimeError("model.compile=true on the CPU needs a C++ compiler for torch.compile's generated "
                               "kernels (install g++), or set model.compile=false")
        model.net.compile()  # in place: parameter names (and so checkpoints) stay those of the eager network
    return model


def eval_preprocessing(d: dict[str, Any]) -> dict[str, Any]:
    """What inference needs to prepare an image as the evaluation split was (stored in the checkpoint)."""
    from medimg.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    return {"img_size": int(d["img_size"]), "resize": float(d.get("eval_resize", 1.0)),
            "mean": [float(v) for v in d.get("mean") or IMAGENET_MEAN],
            "std": [float(v) for v in d.get("std") or IMAGENET_STD]}


def load_weights(model: ImageClassifier, ckpt_path: str) -> None:
    state = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])


def run_phases(cfg: dict[str, Any], model: ImageClassifier, dm: MedImageDataModule, run_dir: Path,
               resume_from: str | None) -> dict[str, dict[str, Any]]:
    """Fit each phase of the stage in order; returns {phase: {best_path, best_score}}."""
    phases = list(cfg["stage"]["phases"].items())
    names = [n for n, _ in phases]
    start = 0
    if resume_from:
        state = read_medimg_state(resume_from)
        if state["phase"]["name"] not in names:
            raise ValueError(f"checkpoint {resume_from} is from phase {state['phase']['name']!r}, "
                             f"which stage={cfg['stage']['name']} does not have (phases: {names})")
        start = names.index(state["phase"]["name"])
        model.phases_done = state["phases_done"]
        log.info("resuming phase %r from %s", names[start], resume_from)
    for i, (name, ph) in enumerate(phases):
        if i < start:
            continue
        epochs = phase_epochs(ph["epochs"], cfg["trainer"].get("max_epochs"))
        model.set_phase(name, ph["train_blocks"], ph["lr"], epochs)
        n_train = sum(p.numel() for p in model.trainable_parameters())
        log.info("phase %r: training %s + head (%d parameters) for up to %d epochs at lr %g",
                 name, model.phase["train_blocks"] or "nothing of the backbone", n_train, epochs, ph["lr"])
        trainer, ckpt = build_phase_trainer(cfg, name, epochs, ph.get("patience"), run_dir)
        data = phase_data(name, ph, model, dm)
        trainer.fit(model, datamodule=data, ckpt_path=resume_from if i == start else None)
        if ckpt.best_model_path:
            score = ckpt.best_model_score
            model.phases_done[name] = {"best_path": ckpt.best_model_path,
                                       "best_score": float(score) if score is not None else None}
            load_weights(model, ckpt.best_model_path)  # the next phase (and test) starts from the best
    return model.phases_done


def phase_data(name: str, ph: dict[str, Any], model: ImageClassifier,
               dm: MedImageDataModule) -> MedImageDataModule | FeatureDataModule:
    """The images, or (``feature_cache: true`` on a frozen backbone) backbone features computed once."""
    if not ph.get("feature_cache", False):
        return dm
    if model.phase["train_blocks"]:
        raise ValueError(f"stage.phases.{name}.feature_cache=true needs a frozen backbone, but the phase trains "
                         f"{model.phase['train_blocks']}; set stage.phases.{name}.train_blocks=[] or "
                         f"stage.phases.{name}.feature_cache=false")
    log.info("phase %r trains the head on backbone features computed once (no augmentation; "
             "stage.phases.%s.feature_cache=false trains it on augmented images)", name, name)
    return FeatureDataModule(dm)


def pick_best(phases_done: dict[str, dict[str, Any]], mode: str) -> str | None:
    """The best checkpoint across phases by the monitored validation metric."""
    scored = [(v["best_score"], v["best_path"]) for v in phases_done.values() if v.get("best_score") is not None]
    if not scored:
        return None
    return (max if mode == "max" else min)(scored)[1]


def train(cfg: DictConfig) -> dict[str, float]:
    c: dict[str, Any] = OmegaConf.to_container(cfg, resolve=True)  # plain dicts from here on
    L.seed_everything(c["seed"], workers=True)
    resume = c.get("ckpt_path")
    run_dir = Path(resume).resolve().parents[1] if resume else Path(c["paths"]["output_dir"])

    accelerator = resolve_accelerator(c["trainer"]["accelerator"])
    pin_memory = _resolve_auto(c["dataset"].get("pin_memory"), accelerator == "gpu")
    dm = MedImageDataModule(c["dataset"], pin_memory=pin_memory)
    dm.prepare_data()
    dm.setup("fit")
    model = build_model(c, dm)

    phases_done = run_phases(c, model, dm, run_dir, resume)
    best = pick_best(phases_done, c["monitor_mode"])
    if best:
        load_weights(model, best)
    trainer = build_eval_trainer(c, run_dir)
    model.calibration = fit_on_validation(trainer, model, dm, c.get("calibration"))  # stored in best.ckpt
    result = evaluate_split(trainer, model, dm, "test") if c.get("test", True) else None  # every rank takes part
    if trainer.is_global_zero:
        _finish_run(c, run_dir, best, model.calibration, result, trainer)
    return result.metrics if result else {}


def _finish_run(c: dict[str, Any], run_dir: Path, best: str | None, calibration: dict[str, Any],
                result: Evaluation | None, trainer) -> None:
    """Rank 0: best.ckpt (with the calibration), the test results (metrics.json, predictions.csv, figures/,
    report.md), run_info.json, hparams with the final metrics, the printed table."""
    if best:
        save_with_calibration(best, run_dir / "checkpoints" / "best.ckpt", calibration)
    metrics = result.metrics if result else {}
    headline = {k: v for k, v in metrics.items() if "/per_class/" not in k}
    if result:
        title = f"Test evaluation: {c['dataset']['name']}, {c['backbone']['name']}, stage {c['stage']['name']}"
        ckpt = str(run_dir / "checkpoints" / "best.ckpt") if best else "none saved (the final weights were evaluated)"
        facts = [("run folder", str(run_dir)), ("checkpoint", ckpt)]
        write_evaluation(result, run_dir, trainer.loggers, title, facts)
    info = run_info()
    write_json(run_dir / "run_info.json", info)
    for lg in trainer.loggers:  # TensorBoard's hparams tab shows the final metrics beside the config
        if isinstance(lg, TensorBoardLogger):
            lg.log_hyperparams(_flat_hparams(c, info), headline)
        else:
            lg.log_hyperparams(_flat_hparams(c, info))
    print_metrics(headline, title=f"test metrics ({c['dataset']['name']}, {c['backbone']['name']})")
    print(f"run folder: {run_dir}")


def _flat_hparams(c: dict[str, Any], info: dict[str, Any]) -> dict[str, Any]:
    keep = {k: c[k] for k in ("seed", "dataset", "backbone", "stage", "model", "trainer")}
    keep["run_info"] = info
    return _flatten(keep)


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v if isinstance(v, int | float | str | bool) else str(v)
    return out


def _resolve_auto(setting, auto_value: bool) -> bool:
    """A true/false config key that also takes ``auto`` (or null): ``auto_value`` then."""
    return auto_value if setting in ("auto", None) else bool(setting)


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    quiet_third_party()
    metrics = train(cfg)
    name = cfg.get("optimized_metric")
    if name and name not in metrics:
        log.warning("optimized_metric=%s is not among the test metrics %s", name, sorted(metrics))
        return None
    return metrics.get(name) if name else None


if __name__ == "__main__":
    main()
