"""Decode-check every image once before training; remember the files already checked."""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from medimg.data.readers import read_image


def _stamp(path: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}"


def _check(path: str) -> str | None:
    try:
        read_image(path)
        return None
    except Exception as e:  # report every kind of failure, with its message
        return str(e)


def find_bad_images(paths: list[str], cache_file: Path | None = None, workers: int = 4) -> dict[str, str]:
    """Return ``{path: error}`` for every image that cannot be decoded (missing files included)."""
    seen: dict[str, str] = {}
    if cache_file is not None and cache_file.exists():
        try:
            seen = json.loads(cache_file.read_text())
        except (OSError, json.JSONDecodeError):
            seen = {}
    bad: dict[str, str] = {}
    todo = []
    for p in paths:
        try:
            stamp = _stamp(p)
        except OSError:
            bad[p] = "file does not exist"
            continue
        if seen.get(p) != stamp:
            todo.append((p, stamp))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (p, stamp), err in zip(todo, pool.map(_check, [t[0] for t in todo])):
            if err is None:
                seen[p] = stamp
            else:
                bad[p] = err
                seen.pop(p, None)
    if cache_file is not None and todo:
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f"{cache_file.name}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(seen))
            tmp.replace(cache_file)
        except OSError:
            pass  # a read-only data folder only costs a re-scan next time
    return bad
