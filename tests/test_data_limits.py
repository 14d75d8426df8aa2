"""Untrusted images and archives have limits: size caps read from headers before decoding, archive caps
checked before extraction, one download of a data set at a time, DICOM palettes and undecodable pixel data."""

from __future__ import annotations

import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from medimg.data.archive import (
    ArchiveLimits,
    DamagedArchiveError,
    NotEnoughSpaceError,
    UnsafeArchiveError,
)
from medimg.data.kaggle import (
    MARKER,
    DataNotReadyError,
    DownloadError,
    KaggleCredentialsError,
    KaggleSet,
    fetch,
    is_complete,
)
from medimg.data.readers import ImageLimits, ImageTooLargeError, UnreadableImageError, read_image
from medimg.data.scan import find_bad_images
from medimg.errors import ConfigError, DataError, UserError
from tests.test_data_readers import _dicom

REPO = Path(__file__).resolve().parents[1]
LIMITS = ImageLimits(50_000_000, 10, key_prefix="dataset.")
# readers.py silences Pillow's bomb warning process-wide at import; pytest resets warning filters around each
# test, so in-process tests restore it here, and the subprocess test checks that the console stays clean.
QUIET_PILLOW = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


def _blank_png(path: Path, width: int, height: int) -> Path:
    """A 1-bit black PNG of any size, written row by row (the file stays a few KB, nothing big in memory)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + (zlib.crc32(kind + data) & 0xFFFFFFFF).to_bytes(4, "big")

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    idat = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def bad_pngs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad")
    return _blank_png(folder / "strip.png", 1, 200_000), _blank_png(folder / "bomb.png", 12_000, 12_000)


# ---------------------------------------------------------------------------------------------------- images
@QUIET_PILLOW
def test_strip_and_bomb_pngs_are_refused_from_their_header(bad_pngs):
    strip, bomb = bad_pngs
    assert strip.stat().st_size < 2000 and bomb.stat().st_size < 40_000
    with pytest.raises(ImageTooLargeError, match=r"1x200000 .*aspect ratio 200,000.0:1.*dataset\.max_aspect_ratio"):
        read_image(strip, min_side=37, limits=LIMITS)
    with pytest.raises(ImageTooLargeError, match=r"12000x12000 = 144,000,000 .*dataset\.max_image_pixels"):
        read_image(bomb, min_side=37, limits=LIMITS)
    err = pytest.raises(UnreadableImageError, read_image, bomb, limits=LIMITS).value
    assert isinstance(err, DataError) and isinstance(err, UserError) and str(bomb) in str(err)


MEASURE = """
import resource, sys
from medimg.data.readers import ImageLimits, read_image
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
for path in sys.argv[1:]:
    try:
        read_image(path, min_side=37, limits=ImageLimits(50_000_000, 10))  # as the cache reads at img_size 32
    except Exception as e:
        print(type(e).__name__)
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) // 1024)
"""


def test_refusing_the_bad_pngs_costs_no_memory_and_prints_no_warning(bad_pngs):
    """In a real process, with the console as a user sees it: no Pillow warning, peak memory barely moves
    (reading them as the cache does at img_size 32 used to cost about 0.9 GB each)."""
    run = subprocess.run([sys.executable, "-c", MEASURE, *map(str, bad_pngs)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    *kinds, extra_mib = run.stdout.split()
    assert kinds == ["ImageTooLargeError"] * 2 and int(extra_mib) < 20, run.stdout
    assert "DecompressionBomb" not in run.stderr and "Warning" not in run.stderr, run.stderr


def _jpeg(path: Path, width: int, height: int) -> Path:
    Image.fromarray(np.full((height, width, 3), 120, np.uint8)).save(path, quality=80)
    return path


def test_large_jpeg_is_decoded_at_reduced_size_when_the_caller_needs_less(tmp_path):
    big = _jpeg(tmp_path / "big.jpg", 2000, 1500)
    caps = ImageLimits(1_000_000, 10)
    with pytest.raises(ImageTooLargeError, match=r"2000x1500 = 3,000,000 pixels, above the cap of 1,000,000"):
        read_image(big, limits=caps)  # no target size: the whole image would be decoded
    img = read_image(big, min_side=200, limits=caps)
    assert min(img.size) >= 200 and img.size[0] * img.size[1] <= 1_000_000
    with pytest.raises(ImageTooLargeError, match="still"):  # 1/2 scale is all min_side=700 allows: 1000x750
        read_image(big, min_side=700, limits=ImageLimits(500_000, 10))
    png = tmp_path / "big.png"
    Image.open(big).save(png)
    with pytest.raises(ImageTooLargeError):  # no reduced decoding for PNG
        read_image(png, min_side=200, limits=caps)


def test_ordinary_images_pass_the_default_caps(tmp_path):
    predict = OmegaConf.load(REPO / "conf" / "predict.yaml")
    caps = ImageLimits.from_config(predict)
    assert caps == ImageLimits(predict.max_image_pixels, predict.max_aspect_ratio)
    derm = read_image(_jpeg(tmp_path / "derm.jpg", 600, 450), limits=caps)
    xray = read_image(_blank_png(tmp_path / "xray.png", 3000, 3000), limits=caps)
    spine = read_image(_blank_png(tmp_path / "spine.png", 400, 1600), limits=caps)
    assert derm.size == (600, 450) and xray.size == (3000, 3000) and spine.size == (400, 1600)


def test_image_limits_from_config_and_bad_values():
    assert ImageLimits.from_config({}) == ImageLimits(None, None)
    assert ImageLimits.from_config({"max_image_pixels": 10, "max_aspect_ratio": 2.5}, "dataset.").max_pixels == 10
    for pixels, ratio, key in ((0, 10, "max_image_pixels"), (1.5, 10, "max_image_pixels"),
                               (100, 0.5, "max_aspect_ratio")):
        with pytest.raises(ConfigError, match=f"dataset.{key}"):
            ImageLimits(pixels, ratio, "dataset.")


@QUIET_PILLOW
def test_scan_reports_refused_images_with_the_reason(tmp_path, bad_pngs):
    ok = _jpeg(tmp_path / "ok.jpg", 64, 48)
    big = _jpeg(tmp_path / "big.jpg", 2000, 1500)
    paths = [str(ok), str(big), *map(str, bad_pngs)]
    caps = ImageLimits(1_000_000, 10)
    bad = find_bad_images(paths, tmp_path / "scan.json", workers=2, limits=caps, min_side=200)
    assert sorted(bad) == sorted(map(str, bad_pngs))  # big.jpg passes: it is read at reduced size
    assert "aspect ratio" in bad[str(bad_pngs[0])] and "max_image_pixels" in bad[str(bad_pngs[1])]
    again = find_bad_images(paths, tmp_path / "scan.json", limits=caps)  # no min_side: big.jpg is checked again
    assert str(big) in again and "max_image_pixels" in again[str(big)]


def test_pillows_own_bomb_check_stays_as_a_backstop(tmp_path):
    huge = _blank_png(tmp_path / "huge.png", 15_000, 15_000)  # 225 million pixels, ~27 KB
    for caps in (ImageLimits(None, None, "dataset."), None):  # no medimg cap: Pillow's still refuses it
        with pytest.raises(ImageTooLargeError, match=r"refused before decoding: .*225000000 pixels"):
            read_image(huge, limits=caps)


# ---------------------------------------------------------------------------------------------------- DICOM
def test_dicom_size_is_checked_before_its_pixels_are_read(tmp_path):
    path = _dicom(tmp_path / "strip.dcm", np.zeros((2, 2), np.uint16))
    import pydicom

    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 1, 60_000  # the header lies; the pixel data holds 4 values
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match="60000x1 pixels: its aspect ratio"):
        read_image(path, limits=LIMITS)
    ds.Rows = 60_000  # 3.6 billion pixels: 7 GB of uint16 had pydicom been asked for them
    ds.save_as(path)
    with pytest.raises(ImageTooLargeError, match="60000x60000 = 3,600,000,000 pixels"):
        read_image(path, limits=LIMITS)
    with pytest.raises(UnreadableImageError, match="cannot decode the pixels") as err:
        read_image(path)  # without caps, the decode itself fails
    assert not isinstance(err.value, ImageTooLargeError)


# ---------------------------------------------------------------------------------------------------- downloads
def _tiny_set_archive(path: Path, members: int = 5) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(members):
            zf.writestr(f"tiny/{'a' if i == 0 else i}.txt", f"file {i}")
    return path


def _tiny_check(folder: Path) -> None:
    if not (folder / "tiny" / "a.txt").is_file():
        raise FileNotFoundError(folder / "tiny" / "a.txt")


TINY = KaggleSet("tiny", "someone/tiny-set", _tiny_check)
CAPS = ArchiveLimits(100, 1 << 30, 100)

RACER = """
import logging, sys, time
from pathlib import Path
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from medimg.data.archive import ArchiveLimits
from medimg.data.kaggle import KaggleSet, fetch

def slow_check(folder):
    time.sleep(1.5)  # a check that takes a while: the other run arrives in the middle of this one
    if not (folder / "tiny" / "a.txt").is_file():
        raise FileNotFoundError(folder / "tiny" / "a.txt")

root, name = Path(sys.argv[1]), sys.argv[2]
(root.parent / f"ready-{name}").touch()
while not (root.parent / "go").exists():
    time.sleep(0.005)
print("result", fetch(KaggleSet("tiny", "someone/tiny-set", slow_check), root, limits=ArchiveLimits(100, 2**30, 100)))
"""


def test_two_fetches_of_one_data_set_at_once_take_turns(tmp_path):
    """Two real processes fetch the same set in the same instant: one extracts, the other waits for it and
    finds the set complete (without the lock the second removed the first's files mid-way)."""
    root = tmp_path / "tiny"
    (root / "raw").mkdir(parents=True)
    _tiny_set_archive(root / "raw" / TINY.archive)
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(root), name], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for name in ("a", "b")]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready-{n}").exists() for n in "ab") and time.monotonic() < deadline:
        time.sleep(0.01)
    (tmp_path / "go").touch()
    logs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    both = "".join(logs)
    assert both.count("extracting") == 1 and both.count("waiting for it to finish") == 1, logs
    assert both.count("already complete") == 1 and both.count(f"result {root / 'raw' / 'extracted'}") == 2, logs
    assert is_complete(root)
    assert sorted(p.name for p in (root / "raw").iterdir()) == sorted([MARKER, TINY.archive, "extracted"])


def test_fetch_applies_the_caps_before_testing_or_extracting(tmp_path):
    root = tmp_path / "tiny"
    (root / "raw").mkdir(parents=True)
    _tiny_set_archive(root / "raw" / TINY.archive, members=12)
    with pytest.raises(UnsafeArchiveError, match=r"holds 12 members, above the cap of 10 \(max_archive_members\)"):
        fetch(TINY, root, limits=ArchiveLimits(10, 1 << 30, 100))
    assert not is_complete(root) and sorted(p.name for p in (root / "raw").iterdir()) == [TINY.archive]
    assert fetch(TINY, root, limits=CAPS) == root / "raw" / "extracted"


def test_downloaded_zip_bomb_is_refused_and_removed(tmp_path):
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("tiny/a.txt", "a")
        zf.writestr("tiny/zeros.bin", bytes(16 << 20))

    class Api:
        def dataset_download_files(self, slug, path=None, force=False, quiet=True, unzip=False):
            Path(path, slug.split("/")[1] + ".zip").write_bytes(bomb.read_bytes())

    with pytest.raises(UnsafeArchiveError, match=r"expands 1,0\d\d-fold(.|\n)*kaggle.com/datasets/someone/tiny-set"):
        fetch(TINY, tmp_path / "tiny", api_factory=Api, limits=CAPS)
    assert list((tmp_path / "tiny" / "raw").iterdir()) == []  # neither the archive nor a temporary folder


def test_download_errors_are_user_errors_and_keep_their_old_bases():
    assert issubclass(KaggleCredentialsError, UserError) and issubclass(KaggleCredentialsError, RuntimeError)
    assert issubclass(DownloadError, UserError) and issubclass(DownloadError, RuntimeError)
    assert issubclass(DataNotReadyError, UserError) and issubclass(DataNotReadyError, FileNotFoundError)
    assert issubclass(DamagedArchiveError, UserError) and issubclass(NotEnoughSpaceError, UserError)
    assert issubclass(UnreadableImageError, DataError) and issubclass(ImageTooLargeError, UnreadableImageError)
