"""Safe zip handling: check that an archive is whole, extract it without letting members escape the target.

Extraction goes into a temporary folder next to the target and is renamed into place only when every member
was written, so an interrupted run never leaves a half-extracted folder under the final name.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath


class UnsafeArchiveError(ValueError):
    """An archive member that would be written outside the target folder (absolute path, ``..``, symlink)."""


class DamagedArchiveError(ValueError):
    """An archive that is not a zip file, is truncated, or has a member whose checksum does not match."""


def skip_os_litter(name: str) -> bool:
    """macOS resource forks and folder metadata that archives made on a Mac carry along."""
    parts = PurePosixPath(name).parts
    return any(p == "__MACOSX" or p.startswith("._") or p in (".DS_Store", "Thumbs.db") for p in parts)


def check_zip(path: str | Path) -> None:
    """Raise DamagedArchiveError unless ``path`` is a complete zip whose members all pass their CRC check."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            bad = zf.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise DamagedArchiveError(f"{path} is not a complete zip archive ({e}); delete it and fetch it again") from e
    if bad is not None:
        raise DamagedArchiveError(f"{path} is damaged: member {bad!r} fails its checksum; delete it and fetch it again")


def _member_target(info: zipfile.ZipInfo, dest: Path) -> Path:
    name = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise UnsafeArchiveError(f"archive member {name!r} is a symbolic link; refusing to extract it")
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or (posix.parts and ":" in posix.parts[0]) or ".." in posix.parts:
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {dest}; refusing to extract")
    target = (dest / posix).resolve()
    if not target.is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(f"archive member {name!r} would be written outside {dest}; refusing to extract")
    return target


def _case_duplicates(names: list[str]) -> set[str]:
    """Members whose path differs from another member's only by letter case (all but the first, sorted)."""
    seen: dict[str, str] = {}
    drop = set()
    for n in sorted(names):
        key = n.casefold()
        if key in seen:
            drop.add(n)
        else:
            seen[key] = n
    return drop


def safe_extract(archive: str | Path, dest: str | Path, skip: Callable[[str], bool] = skip_os_litter,
                 skip_case_duplicates: bool = True) -> list[Path]:
    """Extract ``archive`` into the folder ``dest`` (which must not exist yet); returns the files written.

    Every member is checked before anything is written: absolute names, ``..`` components, drive letters and
    symbolic links raise UnsafeArchiveError. Members for which ``skip(name)`` is true are left out, and with
    ``skip_case_duplicates`` so are members that repeat another member's path in different letter case (they
    would overwrite each other on a case-insensitive file system).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"extraction target {dest} already exists; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.extract-", dir=dest.parent))
    written: list[Path] = []
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = [i for i in zf.infolist() if not skip(i.filename)]
            targets = [(i, _member_target(i, tmp)) for i in infos]  # validate all before writing any
            dupes = _case_duplicates([i.filename for i in infos if not i.is_dir()]) if skip_case_duplicates else set()
            for info, target in targets:
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if info.filename in dupes:
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out, 1 << 20)
                written.append(dest / target.relative_to(tmp.resolve()))
        os.replace(tmp, dest)
    except zipfile.BadZipFile as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DamagedArchiveError(f"{archive} is damaged ({e}); delete it and fetch it again") from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written
