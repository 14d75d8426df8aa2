"""Images a user hands to a trained model (a file, or a folder searched recursively), read in batches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch

from medimg.data.readers import IMAGE_SUFFIXES, ImageLimits, UnreadableImageError, is_image_file, read_image
from medimg.data.sources.folder import is_hidden
from medimg.errors import DataError, MissingDataError

log = logging.getLogger(__name__)


def collect_images(path: str | Path) -> tuple[list[Path], list[Path]]:
    """``(images, skipped)``: a file is taken as it is; a folder is searched recursively, in sorted order,
    and files without an image suffix are skipped (hidden files and folders are left out)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise MissingDataError(f"input={path} does not exist; give an image file or a folder of images")
    if p.is_file():
        return [p], []
    images, skipped = [], []
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        if any(is_hidden(part) for part in f.relative_to(p).parts):
            continue
        (images if is_image_file(f) else skipped).append(f)
    if not images:
        raise DataError(f"no image files in {p} ({len(skipped)} other files skipped); "
                        f"supported suffixes: {', '.join(sorted(IMAGE_SUFFIXES))}")
    return images, skipped


def image_batches(paths: Sequence[Path], transform: Callable, batch_size: int, limits: ImageLimits,
                  unreadable: dict[str, str], single: bool) -> Iterator[tuple[list[Path], torch.Tensor]]:
    """Batches of prepared images; unreadable ones are recorded in ``unreadable`` (path -> reason) and
    skipped, except a ``single`` input, which is an error."""
    batch: list[tuple[Path, torch.Tensor]] = []
    for p in paths:
        try:
            batch.append((p, transform(read_image(p, limits=limits))))
        except UnreadableImageError as e:
            if single:
                raise DataError(f"{e}. Supported files: {', '.join(sorted(IMAGE_SUFFIXES))} "
                                "(any bit depth, grayscale, RGB or RGBA)") from e
            unreadable[str(p)] = str(e)
            log.warning("skipping %s", e)
            continue
        if len(batch) == batch_size:
            yield [b[0] for b in batch], torch.stack([b[1] for b in batch])
            batch = []
    if batch:
        yield [b[0] for b in batch], torch.stack([b[1] for b in batch])
