"""Every command README.md and docs/*.md show, run with tiny settings: a documented command that stops working
fails the suite.

The commands are read from the docs themselves (indented or fenced code lines and inline code that start with
``python -m medimg.<module>``, ``srun python -m ...`` or ``torchrun ... -m ...``), so a command added to the docs
is covered without touching this file. Each is parsed into Hydra overrides the way the command line would be
(``-m`` and ``--cfg job`` dropped, a sweep ``a=1,2`` / ``choice(1,2)`` at its first value, ``gradcam=true``
expanded), its placeholders (``<date>/<time>-<id>``, ``ckpt_path=...``, ``input=photo.jpg``,
``dataset.root=/data/my_images``, ``cv_dir=multirun/...``, ``<ckpt>`` ...) become stand-ins under pytest's tmp
folders, and the command's own config is composed with tiny settings on top (the documented group choices are
kept; where a documented key collides with a tiny one, e.g. ``trainer.max_epochs`` or ``backbone.weights``, the
tiny value wins). ``hydra/launcher=...`` and ``hydra.*`` overrides stay: composing checks that they exist.

What each case then does:

- ``medimg.train``: read the typed settings and check the recipe (blocks, weights) as a run does before any data
  work; with ``dataset=folder`` / ``dataset=csv`` also read a small generated folder / CSV with the documented
  columns. The plain ``python -m medimg.train`` and ``debug=fdr`` train for real. Resuming (``ckpt_path=`` a
  run's ``last.ckpt``) needs a run this test does not have: that override is dropped. Kaggle data sets are only
  composed (no data here).
- ``medimg.evaluate``, ``predict``, ``explain``, ``export``: run for real on a copy of the session's tiny run
  (``tiny_ckpt`` itself is never written to), and their main output files must exist; ``cv_dir=`` gets a
  stand-in multirun folder of two fold runs.
- ``medimg.serve``: settings read and the model loaded as the server does before it opens its port (no server).
- ``medimg.download``: settings only (downloading needs the network).

Every case also checks that each documented value reached the composed config unchanged. No case may reach the
network (a connection to another host fails the test) or write outside its tmp folders (each runs in one).
"""

from __future__ import annotations

import shutil
import socket
from pathlib import Path
from typing import Any

import pytest

from tests.documented_commands_cases import CHECKS, Workspace
from tests.documented_commands_parse import (
    NEEDS_CKPT,
    Documented,
    case_of,
    commands_in,
    documented_commands,
    merged,
)

MODULES = ("train", "evaluate", "predict", "explain", "export", "serve", "download")

# Documented commands that are wrong today (file:line -> why); each is an xfail(strict=True) until fixed.
BROKEN: dict[str, str] = {}  # "file:line": why a documented command cannot work (a strict xfail until fixed)


# ------------------------------------------------------------------------------------------------------ tests

COMMANDS = documented_commands()


def _param(doc: Documented):
    """A pytest param named file:line; slow when it trains or needs the tiny checkpoint; xfail when BROKEN."""
    marks = []
    try:
        slow = doc.module in NEEDS_CKPT or case_of(doc).trains
    except Exception:  # noqa: BLE001 - the test itself reports the parse error
        slow = False
    if slow:
        marks.append(pytest.mark.slow)
    if doc.where in BROKEN:
        marks.append(pytest.mark.xfail(strict=True, reason=BROKEN[doc.where]))
    return pytest.param(doc, id=doc.where, marks=marks)


@pytest.fixture(scope="module")
def run_copy(tiny_ckpt, tmp_path_factory) -> Path:
    """A copy of the tiny run's folder (its best.ckpt and files; not its other checkpoints) that the commands may
    write into (evaluations/, model.onnx): tiny_ckpt itself stays as it was."""
    dst = tmp_path_factory.mktemp("documented") / "run"
    shutil.copytree(tiny_ckpt.parent.parent, dst, ignore=shutil.ignore_patterns("last.ckpt", "*-best.ckpt"))
    return dst


@pytest.fixture(scope="module")
def training_runs(tmp_path_factory) -> Path:
    """Where the real training runs go: they outlive the case that ran them (a passing case's tmp_path does not)."""
    return tmp_path_factory.mktemp("documented_runs")


@pytest.fixture(autouse=True)
def offline_in_tmp(tmp_path, monkeypatch):
    """Run in the case's tmp folder (a stray relative path lands there) and refuse connections to other hosts."""
    monkeypatch.chdir(tmp_path)
    attempts: list[Any] = []
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex

    def remote(sock, address) -> bool:
        local = ("127.0.0.1", "::1", "localhost")
        return sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in local

    def guarded(real):
        def call(sock, address):
            if remote(sock, address):
                attempts.append(address)
                raise OSError(f"a documented-command test tried to reach {address}")
            return real(sock, address)
        return call

    monkeypatch.setattr(socket.socket, "connect", guarded(connect))
    monkeypatch.setattr(socket.socket, "connect_ex", guarded(connect_ex))
    yield
    assert not attempts, f"network access: {attempts}"


def test_the_parser_reads_commands_as_the_docs_write_them():
    """Code lines, continued lines, comments, quotes, inline code, srun/torchrun, fences, spaced placeholders."""
    text = "\n".join([
        "Run `python -m medimg.train` plus overrides, or `python -m medimg.serve ckpt_path=<ckpt>`.",
        "",
        "    python -m medimg.train a=1 \\",
        "        'b=[x, y]'   # a comment, not an argument",
        "    srun python -m medimg.train trainer=ddp",
        "    torchrun --nnodes=2 --master_port=29500 \\",
        "        -m medimg.train seed=1,2",
        "    make serve CKPT=<ckpt>",
        "```",
        "python -m medimg.predict engine=onnx ckpt_path=<the same ckpt> input=...",
        "```",
        "Not a command: medimg.evaluate, `medimg.export`, python -m medimgx.train.",
    ])
    got = [(c.line, c.module, c.args) for c in commands_in("x.md", text)]
    assert got == [(1, "train", ()), (1, "serve", ("ckpt_path=<ckpt>",)), (3, "train", ("a=1", "b=[x, y]")),
                   (5, "train", ("trainer=ddp",)), (6, "train", ("seed=1,2",)),
                   (10, "predict", ("engine=onnx", "ckpt_path=<the_same_ckpt>", "input=..."))]


def test_the_docs_show_the_commands():
    """The parser finds the docs' commands (so the test below cannot silently cover none), of the known command
    modules only, each one parseable into overrides."""
    assert len(COMMANDS) >= 60, [c.where for c in COMMANDS]
    assert {c.module for c in COMMANDS} == set(MODULES)
    assert {"README.md", "docs/sweeps.md", "docs/serving.md", "docs/backbones.md"} <= {c.file for c in COMMANDS}
    for c in COMMANDS:
        case_of(c)


def test_a_command_becomes_overrides_with_stand_ins():
    """Flags dropped, sweeps at their first value, shorthands expanded, paths as tokens, the required added."""
    doc = Documented("x.md", 1, "predict", ("-m", "--cfg", "job", "top_k=2,3", "input=photo.jpg", "gradcam=true"))
    case = case_of(doc)
    assert case.overrides == ("top_k=2", "input=<image>", "gradcam.enabled=true", "ckpt_path=<ckpt>")
    assert case.print_only
    train = case_of(Documented("x.md", 2, "train", ("ckpt_path=<run>/last.ckpt", "optim.optimizer=choice(adam,b)")))
    assert train.overrides == ("optim.optimizer=adam",) and train.dropped == ("ckpt_path=<run>/last.ckpt",)
    with pytest.raises(ValueError, match="placeholder"):
        case_of(Documented("x.md", 3, "train", ("seed=<n>",)))
    assert merged(["logger=mlflow", "trainer.max_epochs=3", "seed=1"], ["logger=csv", "trainer.max_epochs=1"]) == \
        ["logger=mlflow", "seed=1", "trainer.max_epochs=1"]


@pytest.mark.parametrize("doc", [_param(d) for d in COMMANDS])
def test_documented_command(doc: Documented, tmp_path, data_dir, request):
    """The command as documented, with tiny settings: it runs (or composes and passes its checks)."""
    case = case_of(doc)
    CHECKS[doc.module](Workspace(case, tmp_path, data_dir, request))
