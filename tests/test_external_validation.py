"""External validation's parts without a model: telling another site's data from the run's own, the table of
sites, the console lines, the warning when prediction sets fall below their coverage, and the synthetic second
site. (The whole command, on a trained checkpoint: tests/test_eval_pipeline.py.)"""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from medimg.config.dataset import DatasetSettings
from medimg.config.schema import read
from medimg.data.synthetic import generate, render, site_look
from medimg.errors import DataError
from medimg.evaluation.conformal import coverage_warnings
from medimg.evaluation.external import Column, comparison, comparison_lines, other_site, summary_line

TRAINING = {"test/accuracy": 0.90, "test/accuracy_calibrated": 0.91, "test/accuracy_calibrated_ci_low": 0.88,
            "test/accuracy_calibrated_ci_high": 0.94, "test/auroc": 0.97, "test/ece": 0.08, "test/ece_calibrated": 0.02,
            "test/conformal_coverage": 0.90, "test/conformal_coverage_ci_low": 0.86,
            "test/conformal_coverage_ci_high": 0.93}
SITE_B = {"test/accuracy": 0.70, "test/accuracy_calibrated": 0.72, "test/auroc": 0.85, "test/ece_calibrated": 0.11,
          "test/conformal_coverage": 0.78, "test/conformal_coverage_ci_low": 0.72,
          "test/conformal_coverage_ci_high": 0.84}


def _settings(**extra) -> DatasetSettings:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from medimg.cli import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["paths.data_dir=/data", "dataset=synthetic"])
    ds = OmegaConf.to_container(cfg.dataset, resolve=True)
    return read(DatasetSettings, {**ds, **extra}, "dataset")


def test_another_site_is_other_images_not_other_loader_settings():
    own = _settings()
    assert not other_site(own, replace(own, batch_size=7, num_workers=3))  # the same images
    assert other_site(own, replace(own, root="/elsewhere"))
    assert other_site(own, replace(own, extra={**own.extra, "generator_seed": 1}))
    assert other_site(None, own)  # the run's own data set is unknown: compare with what the run recorded
    older = replace(own, extra={k: v for k, v in own.extra.items() if k != "site_shift"})
    assert not other_site(older, own)  # a key added since the run was trained is no difference


def test_the_sites_side_by_side_use_final_values_with_their_intervals():
    cols = [Column("training site, test split", TRAINING), Column("site B, as trained", SITE_B)]
    rows = {r["metric"]: r for r in comparison(cols)}
    assert rows["accuracy"]["training site, test split"] == {"value": 0.91, "ci_low": 0.88, "ci_high": 0.94}
    assert rows["accuracy"]["site B, as trained"] == {"value": 0.72, "ci_low": None, "ci_high": None}
    assert rows["ece"]["site B, as trained"]["value"] == 0.11 and "mean set size" not in json.dumps(rows)
    lines = comparison_lines(cols)
    assert lines[0] == "## Against the training site"
    assert "| accuracy | 0.9100 [0.8800, 0.9400] | 0.7200 |" in lines
    assert "| prediction-set coverage | 0.9000 [0.8600, 0.9300] | 0.7800 [0.7200, 0.8400] |" in lines
    assert comparison_lines(cols[:1]) == []  # one column compares nothing
    (line,) = summary_line(cols[0], [("vs training site", cols[1])])
    assert line.strip() == "vs training site:  AUROC 0.970 -> 0.850, ECE 0.020 -> 0.110, coverage 0.900 -> 0.780"


def test_coverage_below_its_target_is_warned_of_by_its_interval():
    (warning,) = coverage_warnings(SITE_B, "test/", 0.1, ["a", "b"])
    assert "0.780 [0.720, 0.840]" in warning and "below its target 0.9" in warning and "recalibrate=true" in warning
    assert coverage_warnings(TRAINING, "test/", 0.1, ["a", "b"]) == []  # 0.90 [0.86, 0.93] holds its target
    assert coverage_warnings(TRAINING, "test/", 0.05, ["a", "b"]) != []  # ... but not 0.95
    # no interval: more than two binomial standard errors below the target (200 images: 0.042)
    bare = {"test/conformal_coverage": 0.87, "test/per_class/a/support": 150, "test/per_class/b/support": 50}
    assert coverage_warnings(bare, "test/", 0.1, ["a", "b"]) == []
    assert coverage_warnings({**bare, "test/conformal_coverage": 0.85}, "test/", 0.1, ["a", "b"]) != []
    # mondrian sets promise coverage per class: a class below its target is named
    per_class = {**TRAINING, "test/per_class/b/conformal_coverage": 0.6,
                 "test/per_class/b/conformal_coverage_ci_low": 0.5, "test/per_class/b/conformal_coverage_ci_high": 0.7}
    (warning,) = coverage_warnings(per_class, "test/", 0.1, ["a", "b"], per_class=True)
    assert "coverage of b 0.600" in warning


def test_the_second_site_draws_the_same_images_another_way(tmp_path):
    plain, mask = render(np.random.default_rng(3), "melanoma", 48)
    shifted, mask_b = render(np.random.default_rng(3), "melanoma", 48, site_shift=0.5)
    assert (mask == mask_b).all() and not (plain == shifted).all()
    r, g, b = shifted.reshape(-1, 3).mean(0) - plain.reshape(-1, 3).mean(0)
    assert r > 0 > b  # a warmer cast
    assert (site_look(plain / 255.0, 0.0) == plain / 255.0).all()
    root = generate(tmp_path / "b", num_images=20, img_size=24, seed=1, site_shift=0.5)
    assert json.loads((root / "manifest.json").read_text())["site_shift"] == 0.5
    plain_root = generate(tmp_path / "a", num_images=20, img_size=24, seed=1)
    assert "site_shift" not in json.loads((plain_root / "manifest.json").read_text())  # older sets stay valid
    with pytest.raises(DataError, match="site_shift must be in"):
        generate(tmp_path / "c", num_images=20, img_size=24, site_shift=2)
