"""Safe extraction: members that would land outside the target, zip bombs, archives above their caps or too big
for the disk are refused before anything is written."""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from medimg.data import archive as archive_mod
from medimg.data.archive import (
    GIB,
    ArchiveLimits,
    DamagedArchiveError,
    NotEnoughSpaceError,
    UnsafeArchiveError,
    check_limits,
    check_zip,
    safe_extract,
)
from medimg.errors import ConfigError, UserError

DEFAULTS = ArchiveLimits.from_config(OmegaConf.load(Path(__file__).resolve().parents[1] / "conf" / "download.yaml"))


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            if isinstance(name, zipfile.ZipInfo):
                zf.writestr(name, data)
            else:
                zf.writestr(name, data)
    return path


def _symlink_member(name: str, target: str) -> tuple[zipfile.ZipInfo, str]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target


@pytest.mark.parametrize("evil", ["../evil.txt", "a/../../evil.txt", "/tmp/medimg-evil.txt", "C:/evil.txt",
                                  "a\\..\\..\\evil.txt"])
def test_zip_slip_is_refused_and_nothing_is_written(tmp_path, evil):
    archive = _zip(tmp_path / "a.zip", [("ok/first.txt", "fine"), (evil, "pwned")])
    dest = tmp_path / "out" / "extracted"
    with pytest.raises(UnsafeArchiveError, match="outside"):
        safe_extract(archive, dest)
    assert not dest.exists()
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "out" / "evil.txt").exists()
    assert list((tmp_path / "out").iterdir()) == []  # the temporary folder is gone too


def test_symlink_member_is_refused(tmp_path):
    archive = _zip(tmp_path / "a.zip", [("data/x.txt", "x"), _symlink_member("data/link", "/etc/passwd")])
    with pytest.raises(UnsafeArchiveError, match="symbolic link"):
        safe_extract(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_extract_skips_macos_litter_and_case_duplicates(tmp_path):
    archive = _zip(tmp_path / "a.zip", [
        ("Set/Images_1/a.jpg", "A"), ("set/images_1/a.jpg", "A"), ("__MACOSX/Set/._a.jpg", "fork"),
        ("Set/.DS_Store", "x"), ("Set/notes.txt", "n"),
    ])
    written = safe_extract(archive, tmp_path / "out")
    files = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert files == ["Set/Images_1/a.jpg", "Set/notes.txt"]
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in written) == files
    with pytest.raises(FileExistsError):
        safe_extract(archive, tmp_path / "out")


def test_truncated_or_foreign_archive_is_reported(tmp_path):
    good = _zip(tmp_path / "good.zip", [(f"f{i}.bin", bytes(range(256)) * 40) for i in range(5)])
    check_zip(good)
    truncated = tmp_path / "truncated.zip"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DamagedArchiveError, match="truncated.zip"):
        check_zip(truncated)
    (tmp_path / "page.zip").write_text("<html>403 Forbidden</html>")
    with pytest.raises(DamagedArchiveError, match="not a complete zip"):
        check_zip(tmp_path / "page.zip")
    # a member whose bytes were changed fails its CRC
    data = bytearray(good.read_bytes())
    data[100] ^= 0xFF
    (tmp_path / "flipped.zip").write_bytes(bytes(data))
    with pytest.raises(DamagedArchiveError):
        check_zip(tmp_path / "flipped.zip")


def _zeros_zip(path, members: dict[str, int]):
    """Members of ``size`` zero bytes each, deflated (a zip bomb in miniature), written in 1 MiB pieces."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, size in members.items():
            with zf.open(name, "w") as out:
                for start in range(0, size, 1 << 20):
                    out.write(bytes(min(1 << 20, size - start)))
    return path


def _nothing_written(folder) -> bool:
    """Only the archives themselves in ``folder``: no target, no temporary extraction folder."""
    return all(p.suffix == ".zip" for p in folder.iterdir())


def test_zip_bomb_is_refused_before_anything_is_decompressed(tmp_path):
    bomb = _zeros_zip(tmp_path / "bomb.zip", {"zeros.bin": 64 << 20})  # 64 MiB in ~64 KB
    assert bomb.stat().st_size < 200_000
    for call in (lambda: safe_extract(bomb, tmp_path / "out", limits=DEFAULTS), lambda: check_zip(bomb, DEFAULTS)):
        with pytest.raises(UnsafeArchiveError, match=r"bomb.zip: .*expands 1,0\d\d-fold.*max_compression_ratio"):
            call()
    assert _nothing_written(tmp_path)
    written = safe_extract(bomb, tmp_path / "out", limits=ArchiveLimits(10, GIB, 2000))  # a raised cap admits it
    assert [p.stat().st_size for p in written] == [64 << 20]


def test_many_small_members_are_judged_by_the_total_ratio(tmp_path):
    bomb = _zeros_zip(tmp_path / "many.zip", {f"z{i}.bin": 256 << 10 for i in range(12)})  # each under 1 MiB
    with pytest.raises(UnsafeArchiveError, match="the archive expands"):
        safe_extract(bomb, tmp_path / "out", limits=DEFAULTS)
    assert _nothing_written(tmp_path)


def test_member_count_and_size_caps(tmp_path):
    archive = _zip(tmp_path / "a.zip", [(f"f{i:04d}.txt", "x") for i in range(1200)])
    with pytest.raises(UnsafeArchiveError, match=r"holds 1,200 members, above the cap of 1,000 \(max_archive_members\)"):
        safe_extract(archive, tmp_path / "out", limits=ArchiveLimits(1000, GIB, 100))
    assert _nothing_written(tmp_path)
    assert len(safe_extract(archive, tmp_path / "out", limits=ArchiveLimits(1200, GIB, 100))) == 1200
    random = _zip(tmp_path / "r.zip", [("noise.bin", os.urandom(2 << 20))])
    with pytest.raises(UnsafeArchiveError, match=r"extract to 0.00195 GiB, above the cap of .*max_extracted_gib"):
        safe_extract(random, tmp_path / "out2", limits=ArchiveLimits.from_config({"max_extracted_gib": 0.001}))
    assert not (tmp_path / "out2").exists()


def test_archive_that_would_fill_the_disk_is_refused(tmp_path, monkeypatch):
    archive = _zip(tmp_path / "a.zip", [("data.bin", os.urandom(1 << 20))])
    real = archive_mod.shutil.disk_usage

    def nearly_full(folder):
        usage = real(folder)
        return usage._replace(free=archive_mod.DISK_MARGIN_BYTES + (512 << 10))  # half the member's size left

    monkeypatch.setattr(archive_mod.shutil, "disk_usage", nearly_full)
    with pytest.raises(NotEnoughSpaceError, match="has .* free; free some space there") as err:
        safe_extract(archive, tmp_path / "out")
    assert str(tmp_path) in str(err.value) and isinstance(err.value, UserError)
    assert _nothing_written(tmp_path)


def test_member_longer_than_its_header_says_stops_the_extraction(tmp_path):
    """A member whose header declares 1000 bytes but whose stream inflates to 10 MiB."""
    archive = _zeros_zip(tmp_path / "lie.zip", {"small.bin": 10 << 20})
    data = bytearray(archive.read_bytes())
    for signature, offset in ((b"PK\x03\x04", 22), (b"PK\x01\x02", 24)):  # local header, central directory
        at = data.find(signature) + offset
        assert int.from_bytes(data[at:at + 4], "little") == 10 << 20
        data[at:at + 4] = (1000).to_bytes(4, "little")
    archive.write_bytes(bytes(data))
    assert zipfile.ZipFile(archive).infolist()[0].file_size == 1000  # the ratio looks harmless: < 1
    with pytest.raises(DamagedArchiveError, match="lie.zip"):
        safe_extract(archive, tmp_path / "out", limits=DEFAULTS)
    assert _nothing_written(tmp_path)
    with pytest.raises(DamagedArchiveError):
        check_zip(archive, DEFAULTS)


def _info(name: str, size: int, packed: int) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.file_size, info.compress_size = size, packed
    return info


def test_default_caps_admit_the_three_kaggle_archives_and_refuse_a_bomb():
    """The archives' directories as published (sizes rounded), checked against conf/download.yaml."""
    ham = ([_info(f"HAM10000_images_part_{i % 2 + 1}/ISIC_{i:07d}.jpg", 265_000, 262_000) for i in range(10015)] * 2
           + [_info("HAM10000_metadata.csv", 563_000, 110_000), _info("hmnist_28_28_RGB.csv", 41_000_000, 9_000_000)])
    chest = [_info(f"chest_xray/{d}train/NORMAL/IM-{i:04d}.jpeg", 200_000, 198_000) for i in range(5856)
             for d in ("", "chest_xray/")]
    fashion = [_info("fashion-mnist_train.csv", 133_000_000, 30_000_000), _info("fashion-mnist_test.csv",
               22_000_000, 5_000_000), _info("train-images-idx3-ubyte", 47_040_016, 21_000_000)]
    for infos in (ham, chest, fashion):
        check_limits("kaggle.zip", infos, DEFAULTS)
    with pytest.raises(UnsafeArchiveError, match="max_compression_ratio"):
        check_limits("bomb.zip", [_info("zeros.bin", GIB, 1 << 20)], DEFAULTS)  # 1 MiB -> 1 GiB
    with pytest.raises(UnsafeArchiveError, match="max_archive_members"):
        check_limits("many.zip", [_info(f"{i}.txt", 1, 1) for i in range(DEFAULTS.max_members + 1)], DEFAULTS)


def test_archive_errors_are_user_errors_and_bad_caps_are_config_errors():
    for cls in (UnsafeArchiveError, DamagedArchiveError, NotEnoughSpaceError):
        assert issubclass(cls, UserError) and issubclass(cls, ValueError)
    with pytest.raises(ConfigError, match="max_archive_members"):
        ArchiveLimits(0, GIB, 100)
    with pytest.raises(ConfigError, match="max_compression_ratio"):
        ArchiveLimits.from_config({"max_compression_ratio": -1})
