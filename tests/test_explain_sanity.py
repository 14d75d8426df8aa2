"""The localisation / randomisation check end to end: a briefly trained model's Grad-CAM++ points at the
lesions far more often than the same network with random weights."""

from __future__ import annotations

import json
import math

import pytest
from conftest import compose_train
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from medimg.explain.__main__ import run
from medimg.train import CONF_DIR, train

pytestmark = pytest.mark.slow

DATA = ["dataset.num_images=300", "dataset.img_size=64", "dataset.num_workers=0"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
    """ResNet18 from scratch on 300 synthetic 64 px lesions, 10 epochs (5 left it near chance on some machines) (the quickstart recipe, shortened)."""
    out = tmp_path_factory.mktemp("sanity_run")
    train(compose_train(out, data_dir, ["experiment=synthetic", *DATA, "trainer.max_epochs=10", "test=false",
                                        "dataset.batch_size=32", "trainer.enable_progress_bar=false", "logger=csv"]))
    return out / "checkpoints" / "full-best.ckpt"


def test_trained_model_localises_better_than_randomised(trained, data_dir, tmp_path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("explain", overrides=[
            f"ckpt_path={trained}", f"paths.root_dir={tmp_path}", f"paths.data_dir={data_dir}",
            f"paths.output_dir={tmp_path}", *DATA, "methods=[gradcam++,gradcam]", "layers=[layer2]",
            "road_images=4", "road_percentiles=[50]", "examples=2"])
    report = run(OmegaConf.to_container(cfg, resolve=True))
    maps = {(m["method"], m["layer"]): m for m in report["maps"]}
    gpp = maps[("gradcam++", "layer2")]  # 8x8 at 64 px
    assert gpp["feature_size"] == [8, 8] and gpp["resolution_ceiling"] == 1.0
    trained_s, random_s = gpp["trained"], gpp["randomised"]
    assert trained_s["pointing_game"] >= random_s["pointing_game"] + 0.2, gpp
    assert trained_s["energy_in_mask"] > random_s["energy_in_mask"] + 0.05, gpp
    assert trained_s["energy_in_mask"] > 1.5 * trained_s["chance"], gpp
    assert maps[("gradcam", "layer2")]["trained"]["energy_in_mask"] > \
        maps[("gradcam", "layer2")]["randomised"]["energy_in_mask"]
    road = gpp["road"]["trained_map"]
    assert all(math.isfinite(road[k]) for k in ("morf", "lerf", "combined"))
    saved = json.loads((tmp_path / "explain.json").read_text())
    assert saved["n_images"] == report["n_images"] > 30 and len(saved["maps"]) == 2
    assert (tmp_path / "examples.png").is_file()
