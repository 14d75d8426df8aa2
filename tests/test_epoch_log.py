"""A run whose stdout is not a terminal reports one line per epoch, and every run keeps them in train.log."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys

import pytest

from medimg.training.callbacks.epoch_log import EpochLog, lines_on_console
from medimg.training.run_folder import run_log
from tests.conftest import TINY

LINE = re.compile(r"phase full epoch (\d)/2 step \d+: train/loss \d+\.\d{4}, val/auroc \d\.\d{4}; "
                  r"\d+:\d\d:\d\d elapsed, at most \d+:\d\d:\d\d left in the phase")


@pytest.mark.slow
def test_piped_run_logs_one_line_per_epoch_to_the_console_and_train_log(tmp_path, data_dir):
    run = tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("trainer.enable_progress_bar")]  # the bar as users have it
    cmd = [sys.executable, "-m", "medimg.train", "experiment=synthetic", *tiny, "trainer.max_epochs=2",
           "trainer.val_min_steps=0", "test=false", f"paths.data_dir={data_dir}", f"hydra.run.dir={run}"]
    env = {**os.environ, "MEDIMG_ROOT": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)  # piped
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert [m.group(1) for m in LINE.finditer(proc.stdout)] == ["1", "2"], proc.stdout[-3000:]
    assert "it/s" not in proc.stdout + proc.stderr, "the progress bar was drawn into a redirected log"
    log = (run / "train.log").read_text()  # the run's log, whatever the experiment's task_name
    assert [m.group(1) for m in LINE.finditer(log)] == ["1", "2"], log[-3000:]


def test_console_lines_follow_the_setting_and_the_terminal(monkeypatch):
    class Stdout:
        def __init__(self, tty: bool):
            self.tty = tty

        def isatty(self) -> bool:
            return self.tty

    monkeypatch.setattr(sys, "stdout", Stdout(True))
    assert not lines_on_console("auto") and lines_on_console(True) and not lines_on_console(False)
    monkeypatch.setattr(sys, "stdout", Stdout(False))
    assert lines_on_console("auto") and not lines_on_console(False)


def test_without_a_log_handler_the_lines_are_appended_to_train_log(tmp_path):
    EpochLog(tmp_path, "head", "val/auroc", console=False).write("first session")
    EpochLog(tmp_path, "head", "val/auroc", console=False).write("resumed session")
    lines = (tmp_path / "train.log").read_text().splitlines()
    assert [line.split(" - ", 1)[1] for line in lines] == ["first session", "resumed session"]
    assert not list(tmp_path.glob(".*.tmp"))


def test_with_the_runs_log_handler_the_lines_go_through_it(tmp_path):
    handler = logging.FileHandler(tmp_path / "train.log")
    logging.getLogger().addHandler(handler)
    try:
        EpochLog(tmp_path, "head", "val/auroc", console=False).write("through the handler")
    finally:
        logging.getLogger().removeHandler(handler)
        handler.close()
    assert (tmp_path / "train.log").read_text().count("through the handler") == 1


def test_a_resume_continues_the_runs_log(tmp_path):
    saved = tmp_path / ".hydra" / "config.yaml"
    saved.parent.mkdir()
    saved.write_text("task_name: synthetic\n")
    assert run_log(tmp_path, saved) == tmp_path / "train.log"
    (tmp_path / "synthetic.log").write_text("a run from before train.log\n")
    assert run_log(tmp_path, saved) == tmp_path / "synthetic.log"
    (tmp_path / "train.log").write_text("")
    assert run_log(tmp_path, saved) == tmp_path / "train.log"
