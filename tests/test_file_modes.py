"""Files medimg writes get the mode a plain open() gives under the user's umask, not a temporary file's 0600."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pandas as pd
import pytest
import torch

from medimg import files
from medimg.data.synthetic import generate
from medimg.training.checkpoint_io import AtomicCheckpointIO
from medimg.training.run_folder import CLAIM, claim


@pytest.fixture(params=[0o022, 0o077], ids=["umask022", "umask077"])
def umask(request):
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _writers(tmp: Path) -> dict[str, Path]:
    import matplotlib.pyplot as plt

    fig = plt.figure()
    try:
        written = {
            "write_text": files.write_text(tmp / "a.txt", "x"),
            "write_bytes": files.write_bytes(tmp / "b.bin", b"x"),
            "write_json": files.write_json(tmp / "c.json", {"a": 1}),
            "write_csv": files.write_csv(tmp / "d.csv", pd.DataFrame({"a": [1]})),
            "save_torch": files.save_torch({"a": torch.zeros(1)}, tmp / "e.pt"),
            "save_figure": files.save_figure(fig, tmp / "f.png"),
            "append_text": files.append_text(tmp / "g.log", "x\n"),
        }
    finally:
        plt.close(fig)
    AtomicCheckpointIO().save_checkpoint({"state_dict": {}}, tmp / "checkpoints" / "last.ckpt")  # Lightning's path
    written["checkpoint"] = tmp / "checkpoints" / "last.ckpt"
    return written


def test_written_files_get_the_mode_of_a_plain_open(tmp_path, umask):
    expected = 0o666 & ~umask
    (tmp_path / "plain").write_text("x")
    assert mode(tmp_path / "plain") == expected  # what the user's shell would make
    modes = {name: oct(mode(p)) for name, p in _writers(tmp_path).items()}
    assert modes == {name: oct(expected) for name in modes}
    files.write_text(tmp_path / "a.txt", "rewritten")  # a replaced file too
    assert mode(tmp_path / "a.txt") == expected


def test_run_claim_and_temporary_folders_follow_the_umask(tmp_path, umask):
    claim(tmp_path / "run", resuming=False)
    assert mode(tmp_path / "run" / CLAIM) == 0o666 & ~umask
    folder = files.temp_folder(".x-", tmp_path)
    assert mode(folder) == 0o777 & ~umask


def test_a_generated_data_set_follows_the_umask(tmp_path, umask):
    root = generate(tmp_path / "synthetic", num_images=8, img_size=16)
    assert mode(root) == 0o777 & ~umask  # built under a temporary name, renamed into place
    assert mode(root / "manifest.json") == 0o666 & ~umask


def test_the_umask_is_read_without_changing_it(umask):
    assert files.umask() == umask and os.umask(umask) == umask
