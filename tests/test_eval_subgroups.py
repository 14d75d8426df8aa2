"""Subgroup audit: metrics per metadata value equal scikit-learn's on each subset, age bands, a clearly worse
subgroup is flagged and warned about, clear messages for a missing column or an empty band; the metadata
travels from a CSV source into the table and predictions.csv."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from medimg.data.sources.csv_source import csv_table
from medimg.data.table import make_table, metadata_columns
from medimg.errors import ConfigError, DataError
from medimg.evaluation.calibration import Uncalibrated
from medimg.evaluation.plots import close_figures, subgroup_figure
from medimg.evaluation.predictions import SplitOutputs, predictions_table
from medimg.evaluation.report import subgroup_lines
from medimg.evaluation.subgroups import MISSING, check_subgroup_columns, subgroup_audit, subgroup_values

NAMES = ["nevus", "melanoma", "keratosis"]
BOOT = {"bootstrap_resamples": 200, "interval_level": 0.95, "bootstrap_seed": 0}


def _split(n: int = 600, seed: int = 0):
    """Predictions and metadata where women over 60 get much worse predictions than everyone else."""
    rng = np.random.default_rng(seed)
    sex = rng.choice(["female", "male", ""], size=n, p=[0.45, 0.45, 0.1])
    age = rng.integers(20, 90, size=n).astype(float)
    age[rng.random(n) < 0.05] = np.nan
    y = rng.integers(0, 3, size=n)
    strength = np.where((sex == "female") & (age >= 60), 0.1, 2.5)
    z = rng.normal(size=(n, 3)) + np.eye(3)[y] * strength[:, None]
    probs = torch.as_tensor(z).softmax(-1)
    table = pd.DataFrame({"path": [f"{i}.png" for i in range(n)], "label": [NAMES[k] for k in y],
                          "sex": sex, "age": ["" if np.isnan(a) else f"{a:.1f}" for a in age],
                          "site": rng.choice(["back", "face"], size=n)})
    return probs, torch.as_tensor(y), table


def test_subgroup_metrics_equal_sklearn_on_each_subset():
    probs, y, table = _split()
    audit = subgroup_audit(probs, y, table, NAMES, ["sex", "site"], None, ["accuracy", "balanced_accuracy", "auroc"],
                           BOOT, min_images=20)
    p, t = probs.numpy(), y.numpy()
    assert list(audit.table["value"]) == ["female", "male", MISSING, "back", "face"]  # empty cells: missing, last
    for row in audit.table.to_dict("records"):
        cells = table[row["column"]].replace("", MISSING)
        mask = (cells == row["value"]).to_numpy()
        assert row["images"] == mask.sum()
        assert row["accuracy"] == pytest.approx(accuracy_score(t[mask], p[mask].argmax(1)), abs=1e-6)
        assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(t[mask], p[mask].argmax(1)),
                                                         abs=1e-6)
        assert row["auroc"] == pytest.approx(roc_auc_score(t[mask], p[mask], multi_class="ovr"), abs=1e-6)
        assert row["accuracy_ci_low"] <= row["accuracy"] <= row["accuracy_ci_high"]
    assert audit.overall["accuracy"] == pytest.approx(accuracy_score(t, p.argmax(1)), abs=1e-6)


def test_age_bands_flag_the_worse_subgroup_with_a_warning(caplog):
    probs, y, table = _split()
    with caplog.at_level(logging.WARNING):
        audit = subgroup_audit(probs, y, table, NAMES, ["age"], {"age": [0, 40, 60, 120]}, ["accuracy"], BOOT,
                               min_images=20)
    rows = audit.table.set_index("value")
    assert list(rows.index) == ["[0, 40)", "[40, 60)", "[60, 120)", MISSING]
    ages = pd.to_numeric(table["age"], errors="coerce")
    assert rows.loc["[60, 120)", "images"] == ((ages >= 60) & (ages < 120)).sum()
    assert rows.loc[MISSING, "images"] == ages.isna().sum()
    assert rows.loc["[60, 120)", "flagged"] == "accuracy" and rows.loc["[0, 40)", "flagged"] == ""
    assert rows.loc["[60, 120)", "accuracy_ci_high"] < audit.overall["accuracy"]
    assert len(audit.warnings) == 1 and "age=[60, 120)" in audit.warnings[0]
    assert "clearly worse than the overall" in caplog.text
    # too few images: not flagged, however bad
    strict = subgroup_audit(probs, y, table, NAMES, ["age"], {"age": [0, 40, 60, 120]}, ["accuracy"], BOOT,
                            min_images=10_000)
    assert strict.warnings == [] and (strict.table["flagged"] == "").all()


def test_missing_column_and_empty_band_have_clear_messages():
    probs, y, table = _split(200)
    with pytest.raises(ConfigError) as err:
        subgroup_audit(probs, y, table, NAMES, ["scanner"], None, ["accuracy"], BOOT, 10)
    msg = str(err.value)
    assert "'scanner'" in msg and "dataset.subgroup_columns" in msg and "['sex', 'age', 'site']" in msg
    check_subgroup_columns(table, ["sex", "age"])
    with pytest.raises(ConfigError, match="'scanner'"):
        check_subgroup_columns(table, ["sex", "scanner"])
    with pytest.raises(DataError) as err:
        subgroup_values(table, "age", [0, 10, 18, 120], split="test")
    assert "age ['[0, 10)', '[10, 18)']" in str(err.value) and "no images in the test split" in str(err.value)
    with pytest.raises(ConfigError, match="increasing edges"):
        subgroup_values(table, "age", [50, 20])


def test_report_lines_and_figure():
    probs, y, table = _split(300)
    audit = subgroup_audit(probs, y, table, NAMES, ["sex", "age"], {"age": [0, 60, 120]},
                           ["accuracy", "auroc"], BOOT, min_images=20)
    text = "\n".join(subgroup_lines(audit, ["a note"]))
    assert "## Subgroups" in text and "- a note" in text and "| sex | female |" in text
    assert "| age | [60, 120) |" in text and "[" in text.split("| sex | female |")[1].split("\n")[0]
    fig = subgroup_figure(audit)
    assert len(fig.axes) == 4  # 2 columns x 2 metrics
    close_figures({"s": fig})
    assert subgroup_lines(None) == []


def _csv_set(root):
    root.mkdir(parents=True)
    rows = ["file,diagnosis,patient,sex,age,site"]
    for i in range(12):
        Image.fromarray(np.full((8, 8, 3), i * 10, np.uint8)).save(root / f"{i}.png")
        rows.append(f"{i}.png,{'ab'[i % 2]},P{i // 2},{'FM'[i % 3 == 0]}, {30 + i} ,{'back' if i < 6 else ''}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


def test_csv_metadata_travels_into_the_table_and_predictions(tmp_path):
    csv = _csv_set(tmp_path / "set")
    table, classes = csv_table(csv, "file", "diagnosis", group_column="patient")
    assert metadata_columns(table) == ["sex", "age", "site"]  # every column not used otherwise
    assert table["age"].tolist()[:2] == ["30", "31"] and table["site"].tolist()[-1] == ""
    only, _ = csv_table(csv, "file", "diagnosis", keep_columns=["site", "patient"])
    assert metadata_columns(only) == ["site", "patient"]
    with pytest.raises(ConfigError) as err:
        csv_table(csv, "file", "diagnosis", keep_columns=["scanner"])
    assert "['scanner']" in str(err.value) and "'sex'" in str(err.value)

    rows = torch.tensor([3, 0, 5])
    outputs = SplitOutputs(logits=torch.randn(1, 3, 2), targets=torch.tensor([1, 0, 1]), rows=rows)
    pred = predictions_table(outputs, table, classes, Uncalibrated())
    assert list(pred.columns) == ["path", "label", "prediction", "probability", "sex", "age", "site", "p_a",
                                  "p_b"]
    assert pred["age"].tolist() == ["33", "30", "35"] and pred["path"].tolist() == table["path"][[3, 0, 5]].tolist()


def test_make_table_metadata_is_text_and_reserved_names_are_refused():
    t = make_table(["a.png", "b.png"], ["x", "y"], metadata={"age": [45.0, None], "sex": ["m", "f"]})
    assert t["age"].tolist() == ["45.0", ""] and list(t.columns)[:4] == ["path", "label", "group", "split"]
    with pytest.raises(DataError, match="clash"):
        make_table(["a.png"], ["x"], metadata={"split": ["train"]})
    with pytest.raises(DataError, match="values for 2 images"):
        make_table(["a.png", "b.png"], ["x", "y"], metadata={"age": [1]})
