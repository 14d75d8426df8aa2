"""Safe extraction: members that would land outside the target are refused before anything is written."""

from __future__ import annotations

import stat
import zipfile

import pytest

from medimg.data.archive import DamagedArchiveError, UnsafeArchiveError, check_zip, safe_extract


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
