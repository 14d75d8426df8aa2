"""``python -m medimg.explain ckpt_path=<ckpt>``: the Grad-CAM localisation and randomisation check."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from medimg.cli import CONF_DIR, run_task
from medimg.config.commands import ExplainSettings
from medimg.config.overrides import guard_command_line
from medimg.config.schema import read
from medimg.data.datamodule import MedImageDataModule
from medimg.data.sources import work_dir
from medimg.explain.sanity import format_report, load_masked_split, sanity_report, save_examples
from medimg.files import write_json
from medimg.inference import load_trained, resolve_device


def run(cfg: dict[str, Any]) -> dict[str, Any]:
    """Score the checkpoint's Grad-CAM maps on the split's masks; writes explain.json (and examples.png)."""
    x = read(ExplainSettings, cfg, "")
    t0 = time.perf_counter()
    trained = load_trained(x.ckpt_path, resolve_device(x.device))
    pre = trained.preprocess
    if pre.img_size != x.dataset.img_size:
        print(f"note: the model takes {pre.img_size} px inputs, the data set is drawn at {x.dataset.img_size} px")
    dm = MedImageDataModule(x.dataset, work_dir(x.dataset, x.paths.cache_dir), False, x.seed, pre)
    images, masks, labels, _ = load_masked_split(dm, pre, x.split, x.max_images, x.seed)
    report = sanity_report(
        trained.model, images, masks, labels, layers=list(x.layers or [None]), methods=list(x.methods),
        target=x.target, tolerance=x.tolerance, seed=x.seed, road_images=x.road_images,
        road_percentiles=list(x.road_percentiles), batch_size=x.batch_size,
    )
    out = Path(x.output_dir)
    if x.examples:
        save_examples(out / "examples.png", report, images, masks, pre, x.examples)
    cams = report.pop("_cams")
    report["ckpt_path"] = str(x.ckpt_path)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(out / "explain.json", report)
    print(format_report(report))
    print(f"report: {out / 'explain.json'}")
    report["_cams"] = cams
    return report


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="explain")
def main(cfg: DictConfig) -> None:
    run_task(run, OmegaConf.to_container(cfg, resolve=True))


if __name__ == "__main__":
    guard_command_line("explain")  # an unknown key: one line, before any work
    main()
