"""Each Kaggle data set end to end on a miniature of its published archive: download (through a stand-in for
the Kaggle client), extract, check, prepare, split without leaks, and a one-batch training run."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medimg.data.readers import read_image
from medimg.data.sources.chest_xray import patient_group
from medimg.data.sources.fashion_mnist import CLASSES as FASHION_CLASSES
from medimg.data.sources.fashion_mnist import fashion_mnist_table
from medimg.download import download
from medimg.train import train
from tests.conftest import compose_train, dataset_module
from tests.kaggle_fixtures import (
    ARCHIVES,
    HAM_LESIONS,
    FakeKaggle,
    chest_xray_zip,
    compose_download,
    fashion_mnist_zip,
    ham10000_zip,
)

SLUGS = {"ham10000": "kmader/skin-cancer-mnist-ham10000",
         "chest_xray": "paultimothymooney/chest-xray-pneumonia",
         "fashion_mnist": "zalando-research/fashionmnist"}
# one batch per phase, one phase (the two-stage recipe itself is tested elsewhere), 32 px, fp32
FAST = ["stage=head", "trainer.precision=32", "backbone.weights=null", "dataset.img_size=32", "dataset.num_workers=0", "dataset.batch_size=8",
        "dataset.eval_batch_size=8", "trainer.fast_dev_run=true", "trainer.enable_progress_bar=false", "logger=csv"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """All three data sets downloaded (stand-in client) and prepared once, under one root."""
    root = tmp_path_factory.mktemp("kaggle")
    archives = root / "archives"
    archives.mkdir()
    info = {"lesions": ham10000_zip(archives / ARCHIVES["ham10000"]),
            "fashion": fashion_mnist_zip(archives / ARCHIVES["fashion_mnist"])}
    chest_xray_zip(archives / ARCHIVES["chest_xray"])
    mp = pytest.MonkeyPatch()
    fake = FakeKaggle(archives={SLUGS[n]: archives / a for n, a in ARCHIVES.items()}).install(mp)
    try:
        info["tables"] = {n: download(compose_download(root, n)) for n in ARCHIVES}
    finally:
        mp.undo()
    assert sorted(fake.calls) == sorted(SLUGS.values())
    info["root"] = root
    return info


def _split_table(root, name, **overrides):
    cfg = compose_download(root, name)
    dm = dataset_module(root, name, root=cfg.dataset.root, img_size=32, num_workers=0, **overrides)
    dm.setup("fit")
    return dm


def _assert_proportions(table: pd.DataFrame, tolerance: float):
    overall = table["label"].value_counts(normalize=True)
    for split, part in table.groupby("split"):
        share = part["label"].value_counts(normalize=True).reindex(overall.index, fill_value=0)
        worst = (share - overall).abs().max()
        assert worst <= tolerance, f"{split}: class shares off by {worst:.2f}\n{share}\n{overall}"


# ------------------------------------------------------------------------------------------ HAM10000
def test_ham10000_table_from_the_published_layout(prepared):
    root = prepared["root"] / "data" / "ham10000"
    table = prepared["tables"]["ham10000"]
    lesions = prepared["lesions"]
    assert len(table) == sum(len(v) for v in lesions.values())
    assert sorted(table["label"].unique()) == sorted(HAM_LESIONS)
    extracted = root / "raw" / "extracted"
    assert (extracted / "HAM10000_images_part_1").is_dir() and (extracted / "HAM10000_images_part_2").is_dir()
    assert not (extracted / "ham10000_images_part_1").exists()  # the lower-case copies are not extracted twice
    by_image = {p.rsplit("/", 1)[1][:-4]: g for p, g in zip(table["path"], table["group"])}
    assert all(by_image[img] == lesion for lesion, imgs in lesions.items() for img in imgs)
    assert (root / "raw" / "COMPLETE").is_file() and not (root / "raw" / ARCHIVES["ham10000"]).exists()
    # the metadata travels with the table (subgroup audit, predictions.csv), as text
    assert list(table.columns[4:]) == ["dx_type", "age", "sex", "localization"]
    assert set(table["age"]) == {"45.0"} and set(table["sex"]) == {"male"} and set(table["localization"]) == {"back"}


def test_ham10000_split_is_grouped_by_lesion_and_stratified(prepared):
    dm = _split_table(prepared["root"], "ham10000")
    table = dm.table
    assert set(table["split"]) == {"train", "val", "test"}
    splits_per_lesion = table.groupby("group")["split"].nunique()
    assert (splits_per_lesion == 1).all(), "a lesion was split across train/val/test"
    fractions = table["split"].value_counts(normalize=True)
    assert 0.08 <= fractions["test"] <= 0.25 and 0.08 <= fractions["val"] <= 0.25
    _assert_proportions(table, tolerance=0.12)
    assert dm.class_names == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    split_file = prepared["root"] / "data" / "ham10000" / "medimg_splits.csv"
    saved = pd.read_csv(split_file, dtype=str, keep_default_na=False)
    assert dict(zip(saved["path"], saved["split"])) == dict(zip(table["path"], table["split"]))


@pytest.mark.parametrize("experiment, backbone", [("chest_xray_resnet18", "resnet18"),
                                                 ("fashion_mnist_resnet18", "resnet18")])
def test_other_experiments_compose(tmp_path, experiment, backbone):
    cfg = compose_train(tmp_path, tmp_path / "data", [f"experiment={experiment}"])
    assert cfg.dataset.name == experiment.rsplit("_", 1)[0] and cfg.backbone.name == backbone
    assert cfg.backbone.weights == "imagenet" and cfg.stage.name == "two_stage" and cfg.seed == 42


def test_ham10000_experiment_pins_the_seed_recipe(tmp_path):
    cfg = compose_train(tmp_path, tmp_path / "data", ["experiment=ham10000_resnet50"])
    assert cfg.dataset.name == "ham10000" and cfg.backbone.name == "resnet50"
    assert cfg.backbone.weights == "imagenet" and cfg.stage.name == "two_stage" and cfg.seed == 42
    assert cfg.dataset.img_size == 224 and cfg.dataset.batch_size == 64
    head, ft = cfg.stage.phases.head, cfg.stage.phases.finetune
    assert (head.epochs, head.patience, ft.epochs, ft.patience) == (20, 3, 10, 2)


def test_ham10000_trains(prepared, tmp_path):
    cfg = compose_train(tmp_path / "run", prepared["root"] / "data", ["dataset=ham10000", *FAST])
    metrics = train(cfg)
    assert "test/accuracy" in metrics and 0.0 <= metrics["test/accuracy"] <= 1.0
    assert (tmp_path / "run" / "metrics.json").is_file()


# ------------------------------------------------------------------------------------------ chest X-ray
@pytest.mark.parametrize("name, group", [
    ("person1_bacteria_1.jpeg", "person1"), ("person1_virus_6.jpeg", "person1"),
    ("person1946_bacteria_4874.jpeg", "person1946"), ("IM-0115-0001.jpeg", "IM-0115"),
    ("NORMAL2-IM-1427-0001.jpeg", "NORMAL2-IM-1427"), ("odd name.jpeg", "odd name"),
])
def test_chest_xray_patient_from_file_name(name, group):
    assert patient_group(name) == group


def test_chest_xray_official_test_kept_val_carved_by_patient(prepared):
    dm = _split_table(prepared["root"], "chest_xray")
    table = dm.table
    assert dm.class_names == ["NORMAL", "PNEUMONIA"]  # PNEUMONIA = index 1 = positive
    extracted = prepared["root"] / "data" / "chest_xray" / "raw" / "extracted"
    official_test = sorted(str(p.resolve()) for p in (extracted / "chest_xray" / "test").rglob("*.jpeg"))
    assert sorted(table.loc[table["split"] == "test", "path"]) == official_test
    assert not table["path"].str.contains("__MACOSX|chest_xray/chest_xray|/\\._", regex=True).any()
    official_val = {str(p.resolve()) for p in (extracted / "chest_xray" / "val").rglob("*.jpeg")}
    assert len(official_val) > 0 and set(table.loc[table["path"].isin(official_val), "split"]) <= {"train", "val"}
    fit = table[table["split"] != "test"]
    assert (fit.groupby("group")["split"].nunique() == 1).all(), "a patient is in both train and val"
    assert set(fit["split"]) == {"train", "val"}
    _assert_proportions(fit, tolerance=0.15)
    img = read_image(table["path"].iloc[0])
    arr = np.asarray(img)
    assert img.mode == "RGB" and (arr[..., 0] == arr[..., 1]).all() and (arr[..., 1] == arr[..., 2]).all()


def test_chest_xray_trains(prepared, tmp_path):
    cfg = compose_train(tmp_path / "run", prepared["root"] / "data", ["dataset=chest_xray", *FAST])
    metrics = train(cfg)
    assert "test/auroc" in metrics


# ------------------------------------------------------------------------------------------ Fashion-MNIST
def test_fashion_mnist_pngs_match_the_csv(prepared):
    tr_x, tr_y, te_x, te_y = prepared["fashion"]
    table = prepared["tables"]["fashion_mnist"]
    images = prepared["root"] / "data" / "fashion_mnist" / "images"
    assert len(table) == len(tr_y) + len(te_y)
    assert sorted(p.name for p in (images / "train").iterdir()) == sorted(FASHION_CLASSES)
    for i in (0, 7, len(tr_y) - 1):
        png = images / "train" / FASHION_CLASSES[tr_y[i]] / f"train_{i:05d}.png"
        assert (np.asarray(Image.open(png)) == tr_x[i]).all()
    assert (table["split"] == "test").sum() == len(te_y)


def test_fashion_mnist_from_gzipped_idx_files_gives_the_same_images(prepared, tmp_path):
    from medimg.data.kaggle import fetch
    from medimg.data.sources.fashion_mnist import KAGGLE

    raw = tmp_path / "fm" / "raw"
    raw.mkdir(parents=True)
    fashion_mnist_zip(raw / ARCHIVES["fashion_mnist"], with_csv=False, gzip_idx=True)
    fetch(KAGGLE, tmp_path / "fm")
    table, classes = fashion_mnist_table(tmp_path / "fm")
    assert classes == list(FASHION_CLASSES)
    ref = prepared["root"] / "data" / "fashion_mnist" / "images"
    for rel in ("train/Bag/train_00003.png", "test/Trouser/test_00001.png"):
        a, b = tmp_path / "fm" / "images" / rel, ref / rel
        assert a.is_file() == b.is_file()
        if a.is_file():
            assert (np.asarray(Image.open(a)) == np.asarray(Image.open(b))).all()
    assert len(table) == len(prepared["tables"]["fashion_mnist"])
    stamp = (tmp_path / "fm" / "images").stat().st_mtime_ns
    fashion_mnist_table(tmp_path / "fm")  # written once: a second call reuses the images
    assert (tmp_path / "fm" / "images").stat().st_mtime_ns == stamp


def test_fashion_mnist_val_carved_from_train_and_trains(prepared, tmp_path):
    dm = _split_table(prepared["root"], "fashion_mnist")
    assert dm.class_names == list(FASHION_CLASSES)
    val = dm.table[dm.table["split"] == "val"]
    assert len(val) > 0 and val["path"].str.contains("/images/train/").all()
    cfg = compose_train(tmp_path / "run", prepared["root"] / "data", ["dataset=fashion_mnist", *FAST])
    metrics = train(cfg)
    assert "test/accuracy" in metrics
