"""Finding files in an extracted archive whatever folder depth and letter case its author chose."""

from __future__ import annotations

from pathlib import Path

from medimg.data.archive import skip_os_litter


def all_files(folder: Path) -> list[Path]:
    """Every regular file under ``folder`` (macOS litter and hidden files left out), shallowest first."""
    files = [p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")
             and not skip_os_litter(p.relative_to(folder).as_posix())]
    return sorted(files, key=lambda p: (len(p.relative_to(folder).parts), p.as_posix()))


def find_file(folder: Path, *names: str, files: list[Path] | None = None) -> Path | None:
    """The shallowest file whose name equals one of ``names`` ignoring letter case (None when there is none)."""
    wanted = {n.casefold() for n in names}
    for p in files if files is not None else all_files(folder):
        if p.name.casefold() in wanted:
            return p
    return None
