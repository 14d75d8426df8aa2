"""Kaggle data sets on disk: download (official ``kaggle`` client), check, extract, mark complete.

Layout under a data set's root (``${paths.data_dir}/<name>``)::

    raw/<archive>.zip    the archive as Kaggle names it (downloaded, or placed there by hand when offline)
    raw/extracted/       its contents (macOS litter and letter-case duplicates left out)
    raw/COMPLETE         written last, once the extracted files passed the data set's check
    raw.lock             held while a run downloads or extracts: a second run waits, then finds the set complete

Anything else under ``raw/`` that starts with a dot is an interrupted run's leftover and is removed.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from filelock import Timeout

from medimg.data.archive import ArchiveLimits, UnsafeArchiveError, check_zip, safe_extract
from medimg.errors import MissingDataError, UserError
from medimg.files import file_lock, write_json

log = logging.getLogger(__name__)

MARKER = "COMPLETE"
EXTRACTED = "extracted"


class KaggleCredentialsError(UserError, RuntimeError):
    """The Kaggle client found no credentials."""


class DownloadError(UserError, RuntimeError):
    """The download failed (no network, unknown data set, terms not accepted, ...)."""


class DataNotReadyError(UserError, FileNotFoundError):
    """The data set has not been downloaded and prepared yet."""


@dataclass(frozen=True)
class KaggleSet:
    """A Kaggle data set: where it lives on Kaggle and how to check its extracted files."""

    name: str                               # the dataset config's name (conf/dataset/<name>.yaml)
    slug: str                               # owner/dataset on Kaggle
    check: Callable[[Path], object]         # raises FileNotFoundError naming what is missing in the folder

    @property
    def archive(self) -> str:
        """The file name Kaggle gives the archive: ``<dataset>.zip``."""
        return self.slug.split("/")[1] + ".zip"

    @property
    def url(self) -> str:
        return f"https://www.kaggle.com/datasets/{self.slug}"


def raw_dir(root: str | Path) -> Path:
    return Path(root).absolute() / "raw"  # absolute: error messages say exactly where things go


def is_complete(root: str | Path) -> bool:
    raw = raw_dir(root)
    return (raw / MARKER).is_file() and (raw / EXTRACTED).is_dir()


def extracted_dir(ks: KaggleSet, root: str | Path) -> Path:
    """The extracted files of a prepared data set; a clear error naming the download command otherwise."""
    raw = raw_dir(root)
    if not is_complete(root):
        raise DataNotReadyError(
            f"data set {ks.name} is not downloaded yet (no {raw / MARKER}). Run\n"
            f"    python -m medimg.download dataset={ks.name}\n"
            f"(with Kaggle credentials), or download {ks.url} by hand, put the archive at {raw / ks.archive} "
            f"and run that command (it then works offline)."
        )
    return raw / EXTRACTED


CREDENTIALS_HELP = (
    "Kaggle credentials not found. Either set the environment variables KAGGLE_USERNAME and KAGGLE_KEY "
    "(or KAGGLE_API_TOKEN), or save the kaggle.json from https://www.kaggle.com/settings (API -> Create New "
    "Token) as $KAGGLE_CONFIG_DIR/kaggle.json or ~/.kaggle/kaggle.json (chmod 600)."
)


def kaggle_api():
    """An authenticated ``KaggleApi``; KaggleCredentialsError saying what to set when there are no credentials.

    ``import kaggle`` authenticates at import time and exits the process without credentials, so the client
    class is imported directly and authenticated here, with its exit turned into an exception.
    """
    quiet = io.StringIO()  # the client prints its own help text before exiting
    try:
        with contextlib.redirect_stdout(quiet):
            from kaggle.api.kaggle_api_extended import KaggleApi

            api = KaggleApi()
            api.authenticate()
    except ImportError as e:
        raise DownloadError(f"the kaggle package cannot be imported ({e}); install it: pip install kaggle") from e
    except SystemExit as e:
        raise KaggleCredentialsError(CREDENTIALS_HELP) from e
    except OSError as e:  # older clients raise OSError for a missing kaggle.json; requests' errors are OSErrors too
        if _is_network_error(e):
            raise DownloadError(f"cannot reach Kaggle to check the credentials ({e})") from e
        raise KaggleCredentialsError(f"{CREDENTIALS_HELP} ({e})") from e
    return api


def _is_network_error(e: BaseException) -> bool:
    try:
        import requests
    except ImportError:  # pragma: no cover - the kaggle client depends on requests
        return False
    return isinstance(e, requests.RequestException)


def download_archive(ks: KaggleSet, dest: Path, api_factory: Callable[[], object] | None = None,
                     limits: ArchiveLimits | None = None) -> Path:
    """Download the archive into a temporary folder next to ``dest``; move it to ``dest`` once it checks out
    (whole, and within ``limits``)."""
    offline = (f"Without network or credentials: download {ks.url} in a browser and put the archive, named "
               f"exactly {ks.archive}, at {dest}; then run `python -m medimg.download dataset={ks.name}` again.")
    try:
        api = (api_factory or kaggle_api)()  # credentials first: no point in temp folders without them
    except KaggleCredentialsError as e:
        raise KaggleCredentialsError(f"{e}\n{offline}") from e
    except DownloadError as e:
        raise DownloadError(f"{e}\n{offline}") from e
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=dest.parent))
    try:
        log.info("downloading %s from Kaggle into %s", ks.slug, dest.parent)
        try:
            api.dataset_download_files(ks.slug, path=str(tmp), unzip=False, quiet=False)
        except (Exception, SystemExit) as e:  # the client exits on some HTTP errors
            raise DownloadError(f"downloading {ks.slug} from Kaggle failed ({type(e).__name__}: {e}).\n{offline}") from e
        got = tmp / ks.archive
        if not got.is_file():
            zips = sorted(tmp.glob("*.zip"))
            if len(zips) != 1:
                raise DownloadError(f"the Kaggle client left {sorted(p.name for p in tmp.iterdir())} in {tmp}, "
                                    f"not the expected {ks.archive}")
            got = zips[0]
        try:
            check_zip(got, limits)
        except UnsafeArchiveError as e:
            raise UnsafeArchiveError(f"{e}\n(The archive downloaded from {ks.url} was deleted.)") from e
        os.replace(got, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _remove_leftovers(raw: Path) -> None:
    """Interrupted runs leave dot-named temporary folders/files and, without a marker, a stale extraction."""
    for p in raw.glob(".*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    if not (raw / MARKER).exists() and (raw / EXTRACTED).exists():
        shutil.rmtree(raw / EXTRACTED)


@contextlib.contextmanager
def _download_lock(ks: KaggleSet, raw: Path) -> Iterator[None]:
    """One download or extraction of a data set at a time: ``<root>/raw.lock``; a second run waits for it."""
    lock = file_lock(raw)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("another download of %s is running (lock %s); waiting for it to finish", ks.name, lock.lock_file)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def fetch(ks: KaggleSet, root: str | Path, keep_archive: bool = True,
          api_factory: Callable[[], object] | None = None, limits: ArchiveLimits | None = None) -> Path:
    """Make ``root/raw/extracted`` hold the checked contents of the Kaggle archive; returns that folder.

    A no-op when the completion marker is there and the files still pass the check. An archive already at
    ``root/raw/<archive>`` is used instead of downloading. A downloaded archive is deleted after extraction
    unless ``keep_archive``; an archive placed there by hand is always kept. ``limits``: the caps on the
    archive (conf/download.yaml), checked before it is tested or extracted. Two runs on the same ``root``
    take turns (a lock file); the second then finds the set complete.
    """
    raw = raw_dir(root)
    raw.mkdir(parents=True, exist_ok=True)
    with _download_lock(ks, raw):
        return _fetch_locked(ks, raw, keep_archive, api_factory, limits)


def _fetch_locked(ks: KaggleSet, raw: Path, keep_archive: bool, api_factory: Callable[[], object] | None,
                  limits: ArchiveLimits | None) -> Path:
    extracted = raw / EXTRACTED
    if is_complete(raw.parent):
        try:
            ks.check(extracted)
            log.info("%s is already complete in %s", ks.name, extracted)
            return extracted
        except FileNotFoundError as e:
            log.warning("%s was marked complete but fails its check (%s); extracting again", ks.name, e)
            (raw / MARKER).unlink()
    _remove_leftovers(raw)
    archive = raw / ks.archive
    downloaded = False
    if archive.is_file():
        log.info("using the archive %s (no download)", archive)
        check_zip(archive, limits)
    else:
        download_archive(ks, archive, api_factory, limits)
        downloaded = True
    log.info("extracting %s", archive)
    safe_extract(archive, extracted, limits=limits)
    try:
        ks.check(extracted)
    except FileNotFoundError as e:
        raise MissingDataError(f"{archive} does not hold the files of {ks.slug}: {e}. Is it the right archive? "
                                f"Delete it and run the command again to download it.") from e
    write_json(raw / MARKER, {"slug": ks.slug, "archive": ks.archive})
    if downloaded and not keep_archive:
        archive.unlink()
    return extracted
