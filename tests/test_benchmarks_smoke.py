"""The training-throughput benchmark: its targets table from given figures, and a whole run at its smallest size
(``benchmarks/train_throughput.py --smoke --no-options --stages full`` in its own process) printing the tables
BENCHMARKS.md quotes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MAIN_HEADER = (
    "| model | stage | configuration | images/s | x baseline | % of ceiling | peak RSS MiB | "
    "peak PSS MiB (+workers) | others' CPU |"
)
CONFIGURATIONS = ["baseline", "medimg", "plain loop (medimg data)", "ceiling bf16+CL", "ceiling fp32"]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _row(img_s: float, steps_s: float | None = None, **more) -> dict:
    return {"img_s": img_s, "steps_s": steps_s if steps_s is not None else img_s / 4, **more}


def test_targets_table_computes_each_ratio_and_its_verdict(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from throughput.tables import targets_table

    full = {"baseline": _row(10.0), "medimg": _row(25.0), "plain": _row(25.5), "ceiling": _row(28.0)}
    full["images"] = full["medimg"]
    head = {"baseline": _row(30.0), "medimg": _row(600.0, float("nan"), extract_img_s=60.0),
            "images": _row(70.0, 2.0), "plain": _row(80.0, 2.5), "ceiling": _row(84.0)}
    lines = targets_table({("resnet18", "head"): head, ("resnet18", "full"): full}, ["resnet18"],
                          ["head", "full"], head_epochs=10)
    assert lines[2:] == [
        "| resnet18 | full: medimg / baseline | 2.50x | >= 2.5x | yes |",
        "| resnet18 | full: medimg / ceiling | 89% | >= 85% | yes |",
        "| resnet18 | head: medimg steps/s vs plain loop (medimg data) | -20.0% | >= -3% | no |",
        "| resnet18 | full: medimg steps/s vs plain loop (medimg data) | -2.0% | >= -3% | yes |",
        "| resnet18 | medimg head (10 epochs, feature cache) / full | 24.00x | >= 3x | yes |",
        "| resnet18 | feature extraction alone (a 1-epoch head phase at most) / full | 2.40x | >= 3x | no |",
        "| resnet18 | head on augmented images (feature_cache=false) / full | 2.80x (ceiling: 3.00x) | >= 3x | no |",
        "| all | medimg steps/s vs plain loop, geometric mean of the 2 pairs | -11.4% | >= -3% | no |",
    ]


@pytest.mark.slow
def test_throughput_smoke_run_prints_every_way_of_training(tmp_path):
    data_dir = tmp_path / "bench"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_throughput.py"), "--smoke", "--no-options",
           "--stages", "full", "--data-dir", str(data_dir)]
    env = dict(os.environ, MEDIMG_ROOT=str(tmp_path))  # anything medimg writes by default lands here
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.splitlines()

    assert lines[0] == f"Command: `python benchmarks/train_throughput.py {' '.join(cmd[2:])}`"
    assert "64 training JPEGs 600x450 -> 32 px, batch 4, 1 warm-up + 2 timed steps" in lines[2]
    rows = [_cells(ln) for ln in lines[lines.index(MAIN_HEADER) + 2 :] if ln.startswith("| resnet18 | full |")]
    assert [r[2] for r in rows] == CONFIGURATIONS
    for r in rows:
        assert float(r[3]) > 0 and float(r[6]) > 0 and float(r[7]) > 0, r  # images/s, RSS, PSS
    assert rows[0][4] == "1.00x" and rows[3][5] == "100%"  # against the baseline, against the ceiling

    target_lines = lines[lines.index("| model | check | value | target | met |") + 2 :]
    targets = {_cells(ln)[1]: _cells(ln) for ln in target_lines if ln.startswith("|")}
    medimg, baseline = float(rows[1][3]), float(rows[0][3])
    ratio = float(targets["full: medimg / baseline"][2].removesuffix("x"))  # from unrounded rates
    assert ratio == pytest.approx(medimg / baseline, rel=0.05)  # the table shows rates rounded to 0.1
    assert targets["medimg steps/s vs plain loop, geometric mean of the 1 pairs"][4] in ("yes", "no")
    assert lines[-1].startswith("Load average (1/5/15 min):")

    (run,) = (data_dir / "runs").iterdir()
    measured = json.loads((run / "rows.json").read_text())
    assert [m["kind"] for m in measured] == ["baseline", "medimg", "plain", "ceiling", "ceiling"]
    assert all(len(m["step_s"]) == (1 if m["kind"] == "ceiling" else 2) for m in measured)
    assert json.loads((run / "resnet18-full-medimg" / "throughput.json").read_text())
    assert sorted(p.name for p in (data_dir / "ham-like-n64").iterdir()) == ["test", "train", "val"]
