"""Ablation of the training recipe: the old recipe, the new default, and each option on top of it.

    python benchmarks/recipe_ablation.py [--sizes small,large] [--inits random,pretrained] [--seeds 42,43,44]
                                         [--recipes old,new,...] [--data-dir benchmarks/.data/recipe]

Data: the synthetic lesion set (96 px) at two sizes: the 3,000-image default (2,142 train, 429 val, 429 test)
and a small one of 120 training images (about 30 per class on average; the classes keep their 62/18/12/8%
imbalance) with 30 validation images, drawn from 600 images whose other 450 are the test split, so that a test
accuracy is read to about 0.02 rather than the 0.04 of a single image in a 25-image split. Initial weights:
random, or a ResNet18 that medimg trained from scratch on a related task, standing in for ImageNet weights,
which cannot be downloaded here: telling nevi from every other lesion (2 classes, through a CSV) on 3,000
synthetic images of another generator seed, so that its features know lesions but were never asked to tell
melanoma, keratosis and vascular lesions apart. Every configuration runs as a real ``python -m medimg.train``
process with ``stage=two_stage``; the table gives the mean and standard deviation over seeds of the test AUROC, accuracy and ECE (of the calibrated
probabilities: what a user gets) and the wall time of the whole run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from train_runs import mean_sd, medimg_train  # noqa: E402

from medimg.files import write_json, write_text  # noqa: E402

SIZES = {"small": ["dataset.num_images=600", "dataset.split.val=0.05", "dataset.split.test=0.75"],
         "large": ["dataset.num_images=3000"]}
OLD = ["stage.phases.head.head_fit=epochs", "stage.phases.finetune.lr=5e-4", "stage.phases.finetune.min_steps=0",
       "stage.phases.finetune.patience_min_steps=0", "callbacks.early_stopping.from_start=false",
       "trainer.val_min_steps=0"]  # validated after every epoch, as it was
RECIPES = {
    "old": OLD,
    "new": [],
    "val_every_epoch": ["trainer.val_min_steps=0"],  # the new recipe validated after every epoch (as before)
    "lr5e-4": ["stage.phases.finetune.lr=5e-4"],
    "head_only": ["~stage.phases.finetune"],
    "warmup": ["stage.phases.finetune.warmup_steps=50"],
    "lr_decay": ["stage.phases.finetune.train_blocks=[layer3,layer4]", "stage.phases.finetune.lr_decay=0.3"],
    "mixup": ["model.mixup_alpha=0.2"],
    "cutmix": ["model.cutmix_alpha=1.0"],
    "focal": ["model.focal_gamma=2"],
    "ema": ["model.ema_decay=0.99"],
    "balanced": ["dataset.sampling=balanced", "dataset.class_weights=false"],
    "label_smoothing": ["model.label_smoothing=0.1"],
}
COMMON = ["experiment=synthetic", "stage=two_stage", "trainer.enable_progress_bar=false", "logger=csv",
          "callbacks.gradcam.enabled=false", "evaluation.gallery_per_class=0", "evaluation.bootstrap_resamples=0"]


def binary_labels(data_dir: Path) -> Path:
    """labels.csv of the related task: the images of generator seed 1, labelled nevus or other (made once)."""
    from medimg.data.synthetic import CLASSES, generate
    images = data_dir / "synthetic" / "n3000-px96-seed1"
    generate(images, num_images=3000, img_size=96, seed=1)
    lines = ["path,label"] + [f"{p.relative_to(images)},{'nevus' if p.parent.name == 'nevus' else 'other'}"
                              for c in CLASSES for p in sorted((images / "images" / c).glob("*.png"))]
    csv = images.parent / "nevus-vs-other-seed1.csv"
    write_text(csv, "\n".join(lines) + "\n")
    return csv


def pretrained_backbone(root: Path, data_dir: Path) -> Path:
    """A ResNet18 trained from scratch on the related two-class task (made once)."""
    run = root / "pretrain-binary"
    ckpt = run / "checkpoints" / "best.ckpt"
    if not ckpt.is_file():
        csv = binary_labels(data_dir)
        medimg_train([*COMMON, "stage=scratch", "backbone.weights=null", "dataset=csv", f"dataset.csv={csv}",
                      f"dataset.image_root={csv.parent / 'n3000-px96-seed1'}", "dataset.img_size=96",
                      "dataset.eval_resize=1.0", "seed=0"], run, data_dir)
    return ckpt


def run_one(root: Path, data_dir: Path, size: str, init: str, recipe: str, seed: int, weights: Path | None) -> dict:
    run = root / "runs" / f"{size}-{init}-{recipe}-{seed}"
    if not (run / "metrics.json").is_file():
        w = [f"backbone.weights={weights}"] if init == "pretrained" else ["backbone.weights=null"]
        seconds = medimg_train([*COMMON, *SIZES[size], *w, *RECIPES[recipe], f"seed={seed}"], run, data_dir)
        write_json(run / "wall.json", {"seconds": seconds})
    m = json.loads((run / "metrics.json").read_text())
    return {"size": size, "init": init, "recipe": recipe, "seed": seed, "auroc": m["test/auroc"],
            "accuracy": m.get("test/accuracy_calibrated", m["test/accuracy"]),
            "ece": m.get("test/ece_calibrated", m["test/ece"]),
            "seconds": json.loads((run / "wall.json").read_text())["seconds"]}


def table(rows: list[dict]) -> str:
    lines = ["| size | init | recipe | seeds | test AUROC | test accuracy | test ECE | wall s |",
             "|---|---|---|---:|---:|---:|---:|---:|"]
    keys = list(dict.fromkeys((r["size"], r["init"], r["recipe"]) for r in rows))
    for size, init, recipe in keys:
        group = [r for r in rows if (r["size"], r["init"], r["recipe"]) == (size, init, recipe)]
        cells = [mean_sd([r[k] for r in group]) for k in ("auroc", "accuracy", "ece")]
        lines.append(f"| {size} | {init} | {recipe} | {len(group)} | {' | '.join(cells)} | "
                     f"{statistics.mean(r['seconds'] for r in group):.0f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="small,large")
    ap.add_argument("--inits", default="random,pretrained")
    ap.add_argument("--recipes", default=",".join(RECIPES), help=f"any of {', '.join(RECIPES)}")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--data-dir", default=str(REPO / "benchmarks" / ".data" / "recipe"))
    args = ap.parse_args()
    root = Path(args.data_dir)
    data_dir = root / "data"
    weights = pretrained_backbone(root, data_dir) if "pretrained" in args.inits.split(",") else None
    rows = []
    for size in args.sizes.split(","):
        for init in args.inits.split(","):
            for recipe in args.recipes.split(","):
                for seed in (int(s) for s in args.seeds.split(",")):
                    rows.append(run_one(root, data_dir, size, init, recipe, seed, weights))
                    print(json.dumps(rows[-1]), flush=True)
    write_json(root / "rows.json", rows)
    print(f"Command: `python benchmarks/recipe_ablation.py {' '.join(sys.argv[1:])}`\n")
    print(table(rows))


if __name__ == "__main__":
    main()
