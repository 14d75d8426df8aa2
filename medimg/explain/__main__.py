"""``python -m medimg.explain ckpt_path=<ckpt>``: the Grad-CAM localisation and randomisation check."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medimg.checkpoints import CheckpointError, load_classifier
from medimg.console import quiet_third_party
from medimg.explain.faithfulness import DEFAULT_PERCENTILES
from medimg.explain.sanity import format_report, load_masked_split, sanity_report, save_examples
from medimg.predict import preprocessing_of, resolve_device

CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Score the checkpoint's Grad-CAM maps on the split's masks; writes explain.json (and examples.png)."""
    if not cfg.get("ckpt_path"):
        raise CheckpointError("set ckpt_path=<run>/checkpoints/best.ckpt")
    t0 = time.perf_counter()
    model, _ = load_classifier(cfg["ckpt_path"], map_location=resolve_device(cfg.get("device", "auto")))
    ds = cfg["dataset"]
    pre = preprocessing_of(dict(model.hparams), ds["img_size"])
    if pre["img_size"] != int(ds["img_size"]):
        print(f"note: the model takes {pre['img_size']} px inputs, the data set is drawn at {ds['img_size']} px")
    images, masks, labels, _ = load_masked_split(ds, pre, cfg.get("split", "test"), cfg.get("max_images"),
                                                 int(cfg.get("seed", 0)))
    report = sanity_report(
        model, images, masks, labels, layers=list(cfg.get("layers") or [None]),
        methods=list(cfg.get("methods") or ["gradcam"]),
        target=cfg.get("target", "label"), tolerance=int(cfg.get("tolerance", 0)), seed=int(cfg.get("seed", 0)),
        road_images=int(cfg.get("road_images", 50)), road_percentiles=list(cfg.get("road_percentiles") or DEFAULT_PERCENTILES),
        batch_size=int(cfg.get("batch_size", 32)),
    )
    out = Path(cfg["output_dir"])
    out.mkdir(parents=True, exist_ok=True)
    if int(cfg.get("examples", 0)):
        save_examples(out / "examples.png", report, images, masks, pre, int(cfg["examples"]))
    cams = report.pop("_cams")
    report["ckpt_path"] = str(cfg["ckpt_path"])
    report["seconds"] = round(time.perf_counter() - t0, 1)
    (out / "explain.json").write_text(json.dumps(report, indent=2))
    print(format_report(report))
    print(f"report: {out / 'explain.json'}")
    report["_cams"] = cams
    return report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="explain")
def main(cfg: DictConfig) -> None:
    quiet_third_party()
    try:
        run(OmegaConf.to_container(cfg, resolve=True))
    except (CheckpointError, FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    main()
