"""The documented commands, run: each case's stand-ins (images, folders, a CSV set, fold runs, the copied tiny
run) and the per-command check of what the command does with tiny settings. Used by
tests/test_documented_commands.py; not a test module itself."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.conftest import TINY, TINY_ANY_DATA, command_config, compose_train, datamodule_of, settings_of
from tests.documented_commands_parse import Case, assert_documented_values, composed, merged, plain_of

NUM_IMAGES = next(t for t in TINY if t.startswith("dataset.num_images="))
TRAIN_CLASSES = ["benign", "malignant", "other"]  # the classes of the generated folder / CSV data sets

EVALUATE_TINY = ["trainer.accelerator=cpu", "trainer.enable_progress_bar=false", "logger=csv",
                 "evaluation.bootstrap_resamples=50", "evaluation.figures=false"]
CORRUPTIONS_TINY = ["corruptions.names=[contrast]", "corruptions.severities=[1]"]
PREDICT_TINY = ["device=cpu", "batch_size=4"]
EXPLAIN_TINY = ["dataset.num_images=160", "dataset.img_size=32", "dataset.num_workers=0", "max_images=8",
                "road_images=2", "examples=2", "batch_size=8", "device=cpu"]  # the tiny run's own synthetic set

_TRAINED: dict[tuple[str, ...], Path] = {}  # the real training runs, by overrides (a repeated command reuses its run)
_SERVED: dict[tuple[str, ...], tuple[list[str], str]] = {}  # the models serve loaded: classes and engine, by overrides


# ------------------------------------------------------------------------------------------------- stand-ins


def _image(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> Path:
    """A small random RGB image at ``path`` (format from its suffix)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)
    return path


def class_folder(root: Path, classes: list[str], per_class: int = 10) -> Path:
    """``root/<class>/*.png``: the flat folder layout ``dataset=folder`` reads."""
    for c, name in enumerate(classes):
        for k in range(per_class):
            _image(root / name / f"{k}.png", seed=100 * c + k)
    return root


def csv_set(root: Path) -> Path:
    """A label CSV with the columns README's ``dataset=csv`` command names (file, diagnosis, patient_id):
    two images per patient, relative paths from the CSV's folder."""
    rows = []
    for c, name in enumerate(TRAIN_CLASSES):
        for k in range(12):
            rel = f"images/{name}_{k}.png"
            _image(root / rel, seed=1000 + 100 * c + k)
            rows.append({"file": rel, "diagnosis": name, "patient_id": f"p{c}_{k // 2}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root / "labels.csv"


def cv_folder(run: Path, root: Path) -> Path:
    """A stand-in multirun folder of two finished fold runs (``<k>/checkpoints/best.ckpt`` and ``metrics.json``,
    both the copied tiny run's): what ``medimg.evaluate cv_dir=...`` reads."""
    for k in (0, 1):
        fold = root / str(k)
        (fold / "checkpoints").mkdir(parents=True)
        try:
            os.link(run / "checkpoints" / "best.ckpt", fold / "checkpoints" / "best.ckpt")
        except OSError:
            shutil.copy2(run / "checkpoints" / "best.ckpt", fold / "checkpoints" / "best.ckpt")
        shutil.copy2(run / "metrics.json", fold / "metrics.json")
    return root


def ensure_exported(ckpt: Path) -> Path:
    """``model.onnx`` next to ``ckpt`` (``medimg.export`` writes it unless it is there already)."""
    from medimg.export import export

    onnx = ckpt.parent / "model.onnx"
    if not onnx.is_file():
        export(command_config("export", ckpt.parent / "export_log", f"ckpt_path={ckpt}"))
    return onnx


class Workspace:
    """One case's tmp folder, and the stand-ins its tokens become (each made when first asked for)."""

    def __init__(self, case: Case, tmp: Path, data_dir: Path, request: pytest.FixtureRequest):
        self.case, self.tmp, self.data_dir, self.request = case, tmp, data_dir, request

    @property
    def run(self) -> Path:
        """The copied tiny run folder (module-wide: the commands may write into it)."""
        return self.request.getfixturevalue("run_copy")

    @property
    def runs(self) -> Path:
        """A module-wide folder for the real training runs (a repeated command reuses its run)."""
        return self.request.getfixturevalue("training_runs")

    @property
    def ckpt(self) -> Path:
        return self.run / "checkpoints" / "best.ckpt"

    def stand_in(self, token: str) -> Path:
        """The file or folder a token stands for."""
        if token == "<ckpt>":
            return self.ckpt
        if token == "<onnx>":
            return ensure_exported(self.ckpt)
        if token == "<image>":
            return _image(self.tmp / "inputs" / "photo.jpg", seed=7)
        if token == "<images>":
            for k in range(3):
                _image(self.tmp / "new_cases" / f"case{k}.png", seed=10 + k)
            return self.tmp / "new_cases"
        if token == "<folder>":
            return class_folder(self.tmp / "my_images", TRAIN_CLASSES if self.case.doc.module == "train"
                                else self.class_names)
        if token == "<csv>":
            return csv_set(self.tmp / "csv_set")
        if token == "<cv>":
            return cv_folder(self.run, self.tmp / "multirun")
        if token == "<out>":
            return self.tmp / "out"
        raise ValueError(f"no stand-in for {token}")

    @property
    def class_names(self) -> list[str]:
        from medimg.inference import load_trained

        return list(load_trained(self.ckpt).class_names)

    def filled(self) -> list[str]:
        """The case's overrides with every token replaced by its stand-in's path."""
        out = []
        for o in self.case.overrides:
            for token in re.findall(r"<\w+>", o):
                o = o.replace(token, str(self.stand_in(token)))
            out.append(o)
        return out


# --------------------------------------------------------------------------------------------------- commands


def check_train(ws: Workspace) -> None:
    """Compose with TINY, read the settings, check the recipe; read a folder / CSV data set; maybe train."""
    from omegaconf import OmegaConf

    from medimg.train import check_recipe, train

    case, documented = ws.case, ws.filled()
    if case.trains and case.overrides in _TRAINED:
        run = _TRAINED[case.overrides]
    else:
        run = ws.runs / f"run{len(_TRAINED)}" if case.trains else ws.tmp / "run"
        overrides = [*merged(documented, TINY_ANY_DATA), f"paths.cache_dir={ws.tmp / 'cache'}"]
        cfg = compose_train(run, ws.data_dir, overrides)
        if cfg.dataset.source == "synthetic":  # TINY's dataset.num_images is a key of the synthetic set only
            OmegaConf.update(cfg, "dataset.num_images", int(NUM_IMAGES.partition("=")[2]))
        assert_documented_values(documented, overrides, plain_of(cfg))
        s = settings_of(cfg)
        check_recipe(s)
        if s.dataset.source in ("folder", "csv"):
            assert datamodule_of(cfg).class_names == TRAIN_CLASSES
        if not case.trains:
            return
        train(cfg)
        _TRAINED[case.overrides] = run
    assert (run / "metrics.json").is_file() and (run / "checkpoints" / "best.ckpt").is_file()


def check_evaluate(ws: Workspace) -> None:
    """Evaluate the copied tiny run (or the stand-in fold runs of ``cv_dir``) as documented, tiny settings."""
    from medimg.evaluate import evaluate

    case, documented = ws.case, ws.filled()
    tiny = [*EVALUATE_TINY, *(CORRUPTIONS_TINY if case.has("robustness=true") else [])]
    tiny += ["dataset.num_workers=0"] if case.value_of("dataset") else []
    final = merged(documented, tiny)
    cfg = composed("evaluate", [f"paths.root_dir={ws.tmp}", f"paths.output_dir={ws.tmp / 'hydra'}",
                                f"paths.data_dir={ws.data_dir}", f"paths.cache_dir={ws.tmp / 'cache'}", *final])
    assert_documented_values(documented, final, plain_of(cfg))
    if case.value_of("cv_dir"):
        cv = Path(cfg.cv_dir)
        assert evaluate(cfg)
        summary = json.loads((cv / "cv_metrics.json").read_text())
        assert summary["num_folds"] == 2 and (cv / "report.md").is_file()
        assert (cv / "ensemble" / "predictions.csv").is_file()
        return
    evaluations = ws.run / "evaluations"
    before = set(evaluations.iterdir()) if evaluations.is_dir() else set()
    metrics = evaluate(cfg)
    new = sorted(set(evaluations.iterdir()) - before)
    assert len(new) == 1, f"expected one new folder in {evaluations}, got {new}"
    out = new[0]
    for name in ("metrics.json", "predictions.csv", "report.md"):
        assert (out / name).is_file(), f"{out} has no {name}"
    as_trained = {k: v for k, v in metrics.items() if not k.startswith("refitted/")}
    assert json.loads((out / "metrics.json").read_text()).keys() == as_trained.keys()
    if case.has("recalibrate=true"):  # the refitted evaluation beside the one as trained
        refitted = json.loads((out / "refitted" / "metrics.json").read_text())
        assert {f"refitted/{k}" for k in refitted} == set(metrics) - set(as_trained)
    if case.has("robustness=true"):
        assert (out / "robustness" / "robustness.json").is_file() and (out / "robustness" / "robustness.csv").is_file()


def check_predict(ws: Workspace) -> None:
    """Predict the stand-in images with the copied tiny checkpoint (its exported model.onnx for engine=onnx)."""
    from medimg.predict import predict

    case, documented = ws.case, ws.filled()
    if case.value_of("engine") == "onnx" and not case.value_of("onnx_path"):
        ensure_exported(ws.ckpt)
    final = merged(documented, PREDICT_TINY)
    cfg = command_config("predict", ws.tmp / "out", *final)
    assert_documented_values(documented, final, cfg)
    result = predict(cfg)
    images = Path(cfg["input"])
    expected = 1 if images.is_file() else len(list(images.iterdir()))
    assert len(result.rows) == expected and not result.unreadable
    assert Path(result.csv_path) == ws.tmp / "out" / "predictions.csv" and Path(result.csv_path).is_file()
    if cfg["gradcam"]["enabled"]:
        assert len(result.figures) == expected and all(Path(f).is_file() for f in result.figures)


def check_explain(ws: Workspace) -> None:
    """The Grad-CAM sanity check of the copied tiny checkpoint on its own synthetic set, few images."""
    from medimg.explain.__main__ import run

    documented = ws.filled()
    final = merged(documented, [f"paths.data_dir={ws.data_dir}", f"paths.cache_dir={ws.tmp / 'cache'}",
                                *EXPLAIN_TINY])
    cfg = command_config("explain", ws.tmp / "out", *final)
    assert_documented_values(documented, final, cfg)
    report = run(cfg)
    assert (ws.tmp / "out" / "explain.json").is_file() and (ws.tmp / "out" / "examples.png").is_file()
    assert report["ckpt_path"] == str(ws.ckpt)


def check_export(ws: Workspace) -> None:
    """Export the copied tiny checkpoint: a new model.onnx next to it."""
    from medimg.export import export

    documented = ws.filled()
    onnx = ws.ckpt.parent / "model.onnx"
    onnx.unlink(missing_ok=True)  # an earlier case may have exported already
    cfg = command_config("export", ws.tmp / "out", *documented)
    assert_documented_values(documented, documented, cfg)
    info = export(cfg)
    assert Path(info["path"]) == onnx and onnx.is_file()


def check_serve(ws: Workspace) -> None:
    """Read the serve settings and load the model as the server does before opening its port (no server)."""
    from medimg.config.schema import read
    from medimg.config.serve import ServeSettings
    from medimg.serving.service import ServedModel

    case, documented = ws.case, ws.filled()
    if case.value_of("engine") == "onnx" and not case.value_of("onnx_path"):
        ensure_exported(ws.ckpt)
    final = merged(documented, ["device=cpu"])
    cfg = command_config("serve", ws.tmp / "out", *final)
    assert_documented_values(documented, final, cfg)
    s = read(ServeSettings, cfg, "")
    key = tuple(sorted(case.overrides))
    if key not in _SERVED:  # the same command shown again (the docs name `python -m medimg.serve` often)
        model = ServedModel(s)
        _SERVED[key] = (list(model.class_names), model.engine.name)
    assert _SERVED[key] == (ws.class_names, s.engine)


def check_download(ws: Workspace) -> None:
    """Read the download settings (downloading needs the network): a Kaggle set, its folder under tmp."""
    from medimg.config.commands import DownloadSettings
    from medimg.config.schema import read
    from medimg.data.sources import KAGGLE_SETS

    documented = ws.filled()
    cfg = command_config("download", ws.tmp, *documented)
    assert_documented_values(documented, documented, cfg)
    d = read(DownloadSettings, cfg, "")
    assert d.dataset.source in KAGGLE_SETS, f"medimg.download does not download dataset={d.dataset.name}"
    assert Path(d.dataset.root).is_relative_to(ws.tmp)


CHECKS = {"train": check_train, "evaluate": check_evaluate, "predict": check_predict, "explain": check_explain,
          "export": check_export, "serve": check_serve, "download": check_download}
