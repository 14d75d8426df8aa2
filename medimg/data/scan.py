"""Decode-check every image once before training; remember the files already checked.

The check reads each image as training will: with the same size caps (``ImageLimits``) and the same
``min_side`` (a JPEG above the pixel cap passes when it can be decoded at reduced scale). A file is remembered
together with its size, modification time and the caps it passed, so changed caps check it again.
"""

from __future__ import annotations

import json
import os
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from medimg.data.readers import ImageLimits, read_image
from medimg.files import write_text


def _stamp(path: str, caps: str) -> str:
    st = os.stat(path)
    return f"{st.st_size}:{st.st_mtime_ns}:{caps}"


def _check(path: str, min_side: int | None, limits: ImageLimits | None) -> str | None:
    try:
        read_image(path, min_side=min_side, limits=limits)
        return None
    except Exception as e:  # report every kind of failure, with its message
        return str(e)


def find_bad_images(paths: list[str], cache_file: Path | None = None, workers: int = 4,
                    limits: ImageLimits | None = None, min_side: int | None = None) -> dict[str, str]:
    """Return ``{path: error}`` for every image that cannot be decoded (missing files included) or that
    ``limits`` refuse; ``min_side`` as the reader will be called (see ``read_image``)."""
    caps = f"{limits.max_pixels}/{limits.max_aspect_ratio}" if limits is not None else "-"
    caps += f"/{min_side}"
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
            stamp = _stamp(p, caps)
        except OSError:
            bad[p] = "file does not exist"
            continue
        if seen.get(p) != stamp:
            todo.append((p, stamp))
    check = partial(_check, min_side=min_side, limits=limits)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for (p, stamp), err in zip(todo, pool.map(check, [t[0] for t in todo])):
            if err is None:
                seen[p] = stamp
            else:
                bad[p] = err
                seen.pop(p, None)
    if cache_file is not None and todo:
        write_text(cache_file, json.dumps(seen))
    return bad
