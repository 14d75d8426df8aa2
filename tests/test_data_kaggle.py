"""The download path around the Kaggle client: credentials, failures, offline archives, interruptions, re-runs."""

from __future__ import annotations

import os
import shutil

import pytest

from medimg.data.archive import DamagedArchiveError
from medimg.data.kaggle import (
    MARKER,
    DataNotReadyError,
    DownloadError,
    KaggleCredentialsError,
    fetch,
    is_complete,
    kaggle_api,
)
from medimg.data.sources import KAGGLE_SETS
from medimg.download import download
from tests.conftest import dataset_module
from tests.kaggle_fixtures import ARCHIVES, FakeKaggle, chest_xray_zip, compose_download

KS = KAGGLE_SETS["chest_xray"]


@pytest.fixture(scope="module")
def chest_archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("archives") / ARCHIVES["chest_xray"]
    chest_xray_zip(path)
    return path


def _leftovers(raw):
    return sorted(p.name for p in raw.iterdir()) if raw.exists() else []


def test_archive_names_are_what_kaggle_writes():
    assert {n: ks.archive for n, ks in KAGGLE_SETS.items()} == ARCHIVES
    assert KAGGLE_SETS["ham10000"].slug == "kmader/skin-cancer-mnist-ham10000"
    assert KAGGLE_SETS["chest_xray"].slug == "paultimothymooney/chest-xray-pneumonia"
    assert KAGGLE_SETS["fashion_mnist"].slug == "zalando-research/fashionmnist"


def test_missing_credentials_name_the_variables_and_file(monkeypatch, tmp_path):
    """The real client exits the process without credentials; that becomes an error saying what to set."""
    pytest.importorskip("kaggle.api.kaggle_api_extended")
    for var in ("KAGGLE_USERNAME", "KAGGLE_KEY", "KAGGLE_API_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    with pytest.raises(KaggleCredentialsError) as err:
        kaggle_api()
    msg = str(err.value)
    for needle in ("KAGGLE_USERNAME", "KAGGLE_KEY", "kaggle.json", "KAGGLE_CONFIG_DIR", "~/.kaggle"):
        assert needle in msg


def test_missing_credentials_through_download_say_where_an_archive_goes(monkeypatch, tmp_path):
    FakeKaggle(auth_error=SystemExit(1)).install(monkeypatch)
    cfg = compose_download(tmp_path, "chest_xray")
    with pytest.raises(KaggleCredentialsError) as err:
        download(cfg)
    raw = tmp_path / "data" / "chest_xray" / "raw"
    assert "KAGGLE_USERNAME" in str(err.value) and str(raw / "chest-xray-pneumonia.zip") in str(err.value)
    assert _leftovers(raw) == []  # nothing half-done left behind


def test_network_failure_says_where_to_put_the_archive_and_leaves_nothing(monkeypatch, tmp_path):
    fake = FakeKaggle(error=ConnectionError("Name or service not known")).install(monkeypatch)
    with pytest.raises(DownloadError) as err:
        fetch(KS, tmp_path / "chest_xray")
    msg = str(err.value)
    assert "failed" in msg and "Name or service not known" in msg
    assert str(tmp_path / "chest_xray" / "raw" / "chest-xray-pneumonia.zip") in msg
    assert fake.calls == [KS.slug]
    assert _leftovers(tmp_path / "chest_xray" / "raw") == []


def test_interrupted_download_leaves_nothing_mistaken_for_complete(monkeypatch, tmp_path, chest_archive):
    fake = FakeKaggle(archives={KS.slug: chest_archive}).install(monkeypatch)

    def partial(dataset, path=None, force=False, quiet=True, unzip=False):
        with open(os.path.join(path, "chest-xray-pneumonia.zip"), "wb") as f:
            f.write(chest_archive.read_bytes()[:5000])
        raise KeyboardInterrupt

    monkeypatch.setattr(fake.KaggleApi, "dataset_download_files", lambda self, *a, **k: partial(*a, **k))
    root = tmp_path / "chest_xray"
    with pytest.raises(KeyboardInterrupt):
        fetch(KS, root)
    assert not is_complete(root) and _leftovers(root / "raw") == []
    with pytest.raises(DataNotReadyError, match="python -m medimg.download dataset=chest_xray"):
        dataset_module(tmp_path, "chest_xray", root=str(root)).prepare_data()


def test_truncated_download_is_not_moved_into_place(monkeypatch, tmp_path, chest_archive):
    bad = tmp_path / "bad.zip"
    bad.write_bytes(chest_archive.read_bytes()[:-4000])
    FakeKaggle(archives={KS.slug: bad}).install(monkeypatch)
    with pytest.raises(DamagedArchiveError):
        fetch(KS, tmp_path / "chest_xray")
    assert _leftovers(tmp_path / "chest_xray" / "raw") == []


def test_download_then_rerun_is_a_noop(monkeypatch, tmp_path, chest_archive):
    fake = FakeKaggle(archives={KS.slug: chest_archive}).install(monkeypatch)
    cfg = compose_download(tmp_path, "chest_xray")
    table = download(cfg)
    raw = tmp_path / "data" / "chest_xray" / "raw"
    assert fake.calls == [KS.slug] and is_complete(raw.parent)
    assert _leftovers(raw) == ["COMPLETE", "extracted"]  # keep_archive=false: the downloaded zip is gone
    assert len(table) > 0
    stamp = (raw / MARKER).stat().st_mtime_ns
    table2 = download(cfg)
    assert fake.calls == [KS.slug], "a complete data set must not be downloaded again"
    assert (raw / MARKER).stat().st_mtime_ns == stamp
    assert table2.equals(table)


def test_offline_archive_is_used_and_kept(monkeypatch, tmp_path, chest_archive):
    fake = FakeKaggle(error=AssertionError("must not download")).install(monkeypatch)
    raw = tmp_path / "data" / "chest_xray" / "raw"
    raw.mkdir(parents=True)
    shutil.copy(chest_archive, raw / "chest-xray-pneumonia.zip")
    download(compose_download(tmp_path, "chest_xray"))
    assert fake.calls == [] and is_complete(raw.parent)
    assert (raw / "chest-xray-pneumonia.zip").is_file()  # the user's archive is never deleted


def test_interrupted_extraction_is_redone(monkeypatch, tmp_path, chest_archive):
    FakeKaggle(error=AssertionError("must not download")).install(monkeypatch)
    root = tmp_path / "chest_xray"
    raw = root / "raw"
    raw.mkdir(parents=True)
    shutil.copy(chest_archive, raw / KS.archive)
    (raw / "extracted" / "chest_xray").mkdir(parents=True)  # an extraction cut short: no marker
    (raw / ".extracted.extract-abc123").mkdir()
    extracted = fetch(KS, root)
    assert is_complete(root) and not (raw / ".extracted.extract-abc123").exists()
    assert (extracted / "chest_xray" / "test" / "PNEUMONIA").is_dir()
    # a marker over files that no longer pass the check triggers a fresh extraction
    shutil.rmtree(extracted / "chest_xray")
    fetch(KS, root)
    assert (extracted / "chest_xray" / "test" / "PNEUMONIA").is_dir()


def test_wrong_archive_is_reported(monkeypatch, tmp_path):
    import zipfile

    FakeKaggle(error=AssertionError("must not download")).install(monkeypatch)
    raw = tmp_path / "chest_xray" / "raw"
    raw.mkdir(parents=True)
    with zipfile.ZipFile(raw / KS.archive, "w") as zf:
        zf.writestr("something/else.txt", "not x-rays")
    with pytest.raises(FileNotFoundError, match="right archive"):
        fetch(KS, tmp_path / "chest_xray")
    assert not is_complete(tmp_path / "chest_xray")


def test_download_refuses_a_non_kaggle_dataset(tmp_path):
    with pytest.raises(ValueError, match="ham10000"):
        download(compose_download(tmp_path, "synthetic"))


def test_training_without_data_names_the_download_command(tmp_path):
    dm = dataset_module(tmp_path, "ham10000", root=str(tmp_path / "ham10000"), img_size=32, batch_size=4)
    with pytest.raises(DataNotReadyError) as err:
        dm.prepare_data()
    assert "python -m medimg.download dataset=ham10000" in str(err.value)
    assert "skin-cancer-mnist-ham10000.zip" in str(err.value)
