"""No output is clobbered: re-evaluations get their own folder, a rejected ONNX export keeps the previous file,
and every write replaces its file in one step (a failure leaves the old file whole)."""

from __future__ import annotations

import json
import tempfile

import pytest
import torch

from medimg.files import atomic_write, write_json
from medimg.training.checkpoint_io import AtomicCheckpointIO
from tests.conftest import command_config


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = write_json(tmp_path / "metrics.json", {"test/auroc": 0.9})
    with pytest.raises(RuntimeError), atomic_write(target) as tmp:
        tmp.write_text('{"test/au')  # half written when the process fails
        raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"test/auroc": 0.9}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_checkpoints_are_written_beside_their_destination_not_in_tmpdir(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no" / "such" / "tmpdir"))  # an unusable $TMPDIR
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.ones(3)}, "epoch": 4}, path)
    assert torch.load(path, weights_only=True)["epoch"] == 4
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


@pytest.mark.slow
def test_evaluating_the_val_split_does_not_touch_the_run_results(tiny_ckpt, tmp_path, data_dir):
    from medimg.evaluate import evaluate

    run = tiny_ckpt.parents[1]
    before = {name: (run / name).read_bytes() for name in ("metrics.json", "predictions.csv", "report.md")}
    cfg = command_config("evaluate", tmp_path, f"ckpt_path={tiny_ckpt}", "split=val", f"paths.data_dir={data_dir}",
                         "trainer.enable_progress_bar=false", "logger=csv", "evaluation.gallery_per_class=0")
    from omegaconf import OmegaConf

    metrics = evaluate(OmegaConf.create(cfg))
    assert all(k.startswith("val/") for k in metrics)
    assert {name: (run / name).read_bytes() for name in before} == before
    (folder,) = (run / "evaluations").glob("synthetic-val-*")
    assert json.loads((folder / "metrics.json").read_text()) == pytest.approx(metrics)
    assert any(k.startswith("test/") for k in json.loads((run / "metrics.json").read_text()))


@pytest.mark.slow
def test_a_rejected_onnx_export_keeps_the_previous_model(tiny_ckpt, tmp_path):
    from medimg.export import ExportError, export

    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(tiny_ckpt.read_bytes())
    export(command_config("export", tmp_path, f"ckpt_path={ckpt}"))
    good = (tmp_path / "model.onnx").read_bytes()
    with pytest.raises(ExportError, match="previous model.onnx"):
        export(command_config("export", tmp_path, f"ckpt_path={ckpt}", "atol=1e-30"))
    assert (tmp_path / "model.onnx").read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["best.ckpt", "model.onnx"]
