"""Writing files so that a crash or a kill never leaves a truncated file where a good one was.

Every file medimg writes goes through ``atomic_write``: the content is written to a temporary name in the
destination's own folder (so the final rename never crosses file systems), flushed and fsynced, then
``os.replace``-d over the destination in one step. A failure on the way removes the temporary file and leaves
the destination as it was. The file gets the mode a plain ``open()`` gives under the user's umask (0644 under
umask 022, so a colleague can read a run; 0600 under 077), not the temporary file's private 0600; a folder
built under a temporary name (``temp_folder``) likewise gets 0777 & ~umask. ``file_lock`` serialises processes
that write the same shared files (data caches, downloads).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from medimg.errors import WriteError

# what the file system answers when a folder is read-only, full or not ours (the rest stays an OSError), and
# what to do about it
WRITE_ERRNOS = {errno.EROFS: ("the file system is read-only", "write elsewhere"),
                errno.ENOSPC: ("no space is left on the device", "free space there or write elsewhere"),
                errno.EDQUOT: ("the disk quota is used up", "free space there or write elsewhere"),
                errno.EACCES: ("permission denied", "write elsewhere"),
                errno.EPERM: ("permission denied", "write elsewhere"),
                errno.EFBIG: ("the file is too large for the file system", "write elsewhere"),
                errno.ENOTDIR: ("a file is in the way of the folder", "write elsewhere")}


def disk_full(folder: Path, slack: int = 1 << 20) -> bool:
    """Whether the file system of ``folder`` has less than ``slack`` bytes left for an unprivileged writer."""
    try:
        st = os.statvfs(folder)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < slack


def write_failure(e: OSError, what: str, where: str) -> WriteError:
    """The WriteError for ``e`` (an errno of WRITE_ERRNOS) while writing ``what``; ``where`` says which keys
    choose another place."""
    reason, fix = WRITE_ERRNOS[e.errno]
    return WriteError(f"cannot write {what}: {reason}; {fix} ({where})")


def writable_folder(folder: str | Path, where: str) -> Path:
    """``folder``, created if needed and proven writable by a probe file (removed at once), before any work
    whose results would go there; else a WriteError naming it and ``where`` (the keys that move it)."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(prefix=".probe.", dir=folder):
            pass
    except OSError as e:
        if e.errno not in WRITE_ERRNOS:
            raise
        raise write_failure(e, f"into the folder {folder}", where) from None
    return folder


def umask() -> int:
    """The process's file-mode creation mask: read from ``/proc`` where it can be (setting it to read it back
    would change it for a moment under the other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(folder: bool = False) -> int:
    """The mode ``open()`` (``mkdir()`` for a folder) gives a new file under the current umask."""
    return (0o777 if folder else 0o666) & ~umask()


def temp_folder(prefix: str, parent: str | Path) -> Path:
    """A new folder with a hidden temporary name in ``parent`` (to be renamed into place when complete), with a
    plain folder's mode rather than ``mkdtemp``'s private 0700."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, plain_mode(folder=True))
    return folder


@contextlib.contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path next to ``path``; when the block ends without an error, the file written there
    is fsynced and renamed to ``path``. The temporary name starts with a dot, so folder scans skip it. A
    read-only folder or a full disk raises a WriteError naming ``path``; the destination is left as it was."""
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        tmp = Path(tmp_name)
        try:
            os.fchmod(fd, plain_mode())  # mkstemp's 0600 would hide the file from everyone else
        finally:
            os.close(fd)
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except OSError as e:
        elsewhere = e.filename is not None and not str(e.filename).startswith(str(path.parent))
        if e.errno not in WRITE_ERRNOS or elsewhere:  # not this write's failure (reading an input, say)
            raise
        raise write_failure(e, str(path), "the command's output_dir=, or paths.log_dir= for a run") from e
    except RuntimeError as e:  # torch.save reports a full disk as "[enforce fail ...] unexpected pos"
        if not disk_full(path.parent):
            raise
        full = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        raise write_failure(full, str(path), "the command's output_dir=, or paths.log_dir= for a run") from e
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files that ``atomic_write`` left in ``folder`` (and below) when a process was
    killed mid-write; only for a folder no other process writes to. Returns what was removed."""
    stale = [p for p in Path(folder).rglob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def _fsync(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_write(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def append_text(path: str | Path, text: str) -> Path:
    """``text`` added at the end of the file at ``path`` (created if missing), by rewriting it whole through
    ``atomic_write``: for small files that grow a little at a time (a run's epoch log), never truncated."""
    path = Path(path)
    before = path.read_text() if path.is_file() else ""
    return write_text(path, before + text)


def write_json(path: str | Path, data: Any) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: str | Path, frame) -> Path:
    """A pandas DataFrame as CSV (no index column)."""
    with atomic_write(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


def save_torch(obj: Any, path: str | Path) -> Path:
    import torch

    with atomic_write(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def save_figure(fig, path: str | Path, **kwargs: Any) -> Path:
    """A matplotlib figure as an image file (format from the suffix)."""
    path = Path(path)
    kwargs.setdefault("format", path.suffix.lstrip(".") or "png")
    with atomic_write(path) as tmp:
        fig.savefig(tmp, **kwargs)
    return path


def read_torch(path: str | Path, error: type[Exception], name: str) -> Any:
    """A torch file read with ``weights_only=True`` (tensors and plain types, never arbitrary pickles); ``error``
    says that the ``name`` at ``path`` is missing or unreadable."""
    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise error(f"{name} {p} does not exist")
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:
        raise error(f"{name} {p} cannot be read (corrupt, truncated or not a torch file): {e}") from e


def file_lock(path: str | Path, timeout: float = -1) -> FileLock:
    """An inter-process lock on ``path`` through the hidden file ``.<name>.lock`` beside it (``with
    file_lock(p): ...``); ``timeout`` -1 waits for ever."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(f".{path.name.lstrip('.')}.lock")), timeout=timeout)
