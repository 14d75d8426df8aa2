"""Safe zip handling: check that an archive is whole and within its caps, extract it without letting members
escape the target.

Before anything is written, the archive's directory is checked: member count, total uncompressed size
(against ``max_extracted_gib`` and against the free space of the target's disk, less a margin) and the
compression ratio, of the whole and of each member (a zip bomb expands a thousand-fold). While copying, the
bytes of each member are counted, and a member that yields more than its header declared stops the
extraction. Extraction goes into a temporary folder next to the target and is renamed into place only when
every member was written, so an interrupted run never leaves a half-extracted folder under the final name.
"""

from __future__ import annotations

import os
import shutil
import stat
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medimg.errors import ConfigError, UserError
from medimg.files import temp_folder

GIB = 1 << 30
DISK_MARGIN_BYTES = 512 << 20  # left free on the target's disk after extraction (logs, caches, the OS)
RATIO_FLOOR_BYTES = 1 << 20    # members (and archives) smaller than this expand harmlessly at any ratio


class UnsafeArchiveError(UserError, ValueError):
    """An archive medimg refuses to extract: a member that would be written outside the target folder
    (absolute path, ``..``, symlink), or an archive above its caps on members, size or compression ratio."""


class NotEnoughSpaceError(UnsafeArchiveError):
    """The extracted files would not fit on the target's disk (with a margin left free)."""


class DamagedArchiveError(UserError, ValueError):
    """An archive that is not a zip file, is truncated, or has a member whose checksum does not match."""


@dataclass(frozen=True)
class ArchiveLimits:
    """Caps on an archive, checked from its directory before extraction; None = no cap."""

    max_members: int | None
    max_extracted_bytes: int | None
    max_compression_ratio: float | None

    def __post_init__(self) -> None:
        for key, value in (("max_archive_members", self.max_members),
                           ("max_extracted_gib", self.max_extracted_bytes),
                           ("max_compression_ratio", self.max_compression_ratio)):
            if value is not None and not value > 0:
                raise ConfigError(f"{key} must be > 0 or null (no cap), not {value!r}")

    @classmethod
    def from_config(cls, cfg: Mapping) -> ArchiveLimits:
        """From ``max_archive_members``, ``max_extracted_gib`` and ``max_compression_ratio`` (missing or null:
        no cap), as conf/download.yaml holds them."""
        gib = cfg.get("max_extracted_gib")
        return cls(cfg.get("max_archive_members"), None if gib is None else int(float(gib) * GIB),
                   cfg.get("max_compression_ratio"))


def skip_os_litter(name: str) -> bool:
    """macOS resource forks and folder metadata that archives made on a Mac carry along."""
    parts = PurePosixPath(name).parts
    return any(p == "__MACOSX" or p.startswith("._") or p in (".DS_Store", "Thumbs.db") for p in parts)


def _gib(n: float) -> str:
    return f"{n / GIB:.3g} GiB"


def _check_ratio(archive: Path, what: str, size: int, compressed: int, cap: float | None) -> None:
    if cap is None or size < RATIO_FLOOR_BYTES:
        return
    ratio = size / max(compressed, 1)
    if ratio > cap:
        raise UnsafeArchiveError(
            f"{archive}: {what} expands {ratio:,.0f}-fold ({compressed:,} bytes -> {size:,}), above the cap of "
            f"{cap:g} (max_compression_ratio): a zip bomb? Refusing to extract it. If the archive is genuine, "
            f"raise max_compression_ratio.")


def check_limits(archive: str | Path, infos: list[zipfile.ZipInfo], limits: ArchiveLimits,
                 members: int | None = None) -> None:
    """Raise UnsafeArchiveError when the archive breaks a cap: ``members`` entries in all (default
    ``len(infos)``), the uncompressed size of ``infos`` (the members to extract), or a compression ratio."""
    archive = Path(archive)
    count = len(infos) if members is None else members
    if limits.max_members is not None and count > limits.max_members:
        raise UnsafeArchiveError(
            f"{archive} holds {count:,} members, above the cap of {limits.max_members:,} (max_archive_members); "
            f"refusing to extract it. If the archive is genuine, raise max_archive_members.")
    size = sum(i.file_size for i in infos)
    if limits.max_extracted_bytes is not None and size > limits.max_extracted_bytes:
        raise UnsafeArchiveError(
            f"{archive} would extract to {_gib(size)}, above the cap of {_gib(limits.max_extracted_bytes)} "
            f"(max_extracted_gib); refusing to extract it. If the archive is genuine, raise max_extracted_gib.")
    _check_ratio(archive, "the archive", size, sum(i.compress_size for i in infos), limits.max_compression_ratio)
    for info in infos:
        _check_ratio(archive, f"member {info.filename!r}", info.file_size, info.compress_size,
                     limits.max_compression_ratio)


def check_disk_space(archive: str | Path, size: int, folder: str | Path) -> None:
    """Raise NotEnoughSpaceError unless ``size`` bytes fit in ``folder``'s file system with a margin left."""
    free = shutil.disk_usage(folder).free
    if size + DISK_MARGIN_BYTES > free:
        raise NotEnoughSpaceError(
            f"extracting {archive} needs {_gib(size)} (plus {_gib(DISK_MARGIN_BYTES)} left free), but {folder} "
            f"has {_gib(free)} free; free some space there or point paths.data_dir at a larger disk.")


def check_zip(path: str | Path, limits: ArchiveLimits | None = None) -> None:
    """Raise DamagedArchiveError unless ``path`` is a complete zip whose members all pass their CRC check;
    with ``limits``, the caps are checked first (from the directory), so a zip bomb is never decompressed."""
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            if limits is not None:
                check_limits(path, zf.infolist(), limits)
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


def _copy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, archive: Path) -> None:
    """Copy one member, counting its bytes: a stream longer than the header's size stops the extraction."""
    written = 0
    with zf.open(info) as src, open(target, "wb") as out:
        while chunk := src.read(1 << 20):
            written += len(chunk)
            if written > info.file_size:
                raise DamagedArchiveError(
                    f"{archive}: member {info.filename!r} decompresses to more than the {info.file_size:,} bytes "
                    f"its header declares; refusing to extract it. Delete the archive and fetch it again.")
            out.write(chunk)


def _members_to_write(zf: zipfile.ZipFile, skip: Callable[[str], bool], skip_case_duplicates: bool):
    """(all entries, the files to write): ``skip``-ped names and letter-case duplicates left out."""
    infos = [i for i in zf.infolist() if not skip(i.filename)]
    files = [i for i in infos if not i.is_dir()]
    dupes = _case_duplicates([i.filename for i in files]) if skip_case_duplicates else set()
    return infos, [i for i in files if i.filename not in dupes]


def _extract_into(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], files: list[zipfile.ZipInfo],
                  archive: Path, dest: Path) -> list[Path]:
    """Write the folders of ``infos`` and the ``files`` into a temporary folder, then rename it to ``dest``."""
    targets = [(i, _member_target(i, dest)) for i in infos]  # validate all before writing any
    keep = {id(i) for i in files}
    root = dest.resolve()
    tmp = temp_folder(f".{dest.name}.extract-", dest.parent)
    written: list[Path] = []
    try:
        for info, target in targets:
            out = tmp / target.relative_to(root)
            if info.is_dir():
                out.mkdir(parents=True, exist_ok=True)
            elif id(info) in keep:
                out.parent.mkdir(parents=True, exist_ok=True)
                _copy_member(zf, info, out, archive)
                written.append(dest / target.relative_to(root))
        os.replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return written


def safe_extract(archive: str | Path, dest: str | Path, skip: Callable[[str], bool] = skip_os_litter,
                 skip_case_duplicates: bool = True, limits: ArchiveLimits | None = None) -> list[Path]:
    """Extract ``archive`` into the folder ``dest`` (which must not exist yet); returns the files written.

    Every member is checked before anything is written: absolute names, ``..`` components, drive letters and
    symbolic links raise UnsafeArchiveError, and so do breaches of ``limits``; files that would not fit on the
    disk raise NotEnoughSpaceError. Members for which ``skip(name)`` is true are left out, and with
    ``skip_case_duplicates`` so are members that repeat another member's path in different letter case (they
    would overwrite each other on a case-insensitive file system).
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"extraction target {dest} already exists; remove it first")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            infos, files = _members_to_write(zf, skip, skip_case_duplicates)
            if limits is not None:
                check_limits(archive, files, limits, members=len(zf.infolist()))
            check_disk_space(archive, sum(i.file_size for i in files), dest.parent)
            return _extract_into(zf, infos, files, archive, dest)
    except zipfile.BadZipFile as e:
        raise DamagedArchiveError(f"{archive} is damaged ({e}); delete it and fetch it again") from e
