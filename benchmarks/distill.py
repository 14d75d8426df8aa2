"""Knowledge distillation against the same student trained without a teacher, over seeds.

    python benchmarks/distill.py [--students resnet18,efficientnet_b0] [--teachers none,resnet50,folds]
                                 [--seeds 42,43,44] [--images 600] [--teacher-images 3000] [--img-size 64]

The students' data: a small synthetic lesion set (``--images``, generator seed 2; 70/15/15 split, the classes'
62/18/12/8% imbalance) at ``--img-size`` px. No ImageNet weights can be downloaded here, so every network
trains from random weights with ``stage=scratch`` (every layer, 12 epochs, early stopping on validation
AUROC); a student with a teacher runs the same recipe with ``distill.teacher`` set (``distill.temperature`` 4,
``distill.alpha`` 0.5: the teacher takes part in every batch). Teachers: ``resnet50``, one run trained on a
larger set of other patients (``--teacher-images``, generator seed 0: none of the students' images), as a
hospital's large model is trained on more data than a site has; and ``folds``, a 5-fold ResNet18 ensemble
trained on the students' own small set (``dataset.num_folds=5``; the folds' mean softened probabilities).
Every run is a real ``python -m medimg.train`` process. The table gives, over seeds, the mean and standard deviation of the
calibrated test AUROC, accuracy and ECE, and the wall time; a second table the teachers' own figures.
Prediction speed: ``benchmarks/predict_latency.py`` on the runs' checkpoints (see BENCHMARKS.md).
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

from medimg.files import write_json  # noqa: E402

COMMON = ["dataset=synthetic", "stage=scratch", "backbone.weights=null", "trainer.enable_progress_bar=false",
          "logger=csv", "callbacks.gradcam.enabled=false", "evaluation.gallery_per_class=0",
          "evaluation.bootstrap_resamples=0"]
FOLDS = 5


def figures(run: Path) -> dict:
    m = json.loads((run / "metrics.json").read_text())
    return {"auroc": m["test/auroc"], "accuracy": m.get("test/accuracy_calibrated", m["test/accuracy"]),
            "ece": m.get("test/ece_calibrated", m["test/ece"])}


def teacher(root: Path, data_dir: Path, name: str, data: list[str], big: list[str]) -> tuple[Path, list[dict], float]:
    """The teacher ``name`` (trained once): what ``distill.teacher`` takes, its members' figures (each on its
    own test split), wall s."""
    run = root / "teachers" / name
    if name == "resnet50":
        if not (run / "metrics.json").is_file():
            write_json(run.with_suffix(".wall.json"), {"seconds": medimg_train(
                [*COMMON, *big, "backbone=resnet50", "backbone.weights=null", "seed=0"], run, data_dir)})
        runs = [run]
    else:  # a k-fold run: one sub-folder per fold
        if not (run / str(FOLDS - 1) / "metrics.json").is_file():
            folds = ",".join(str(k) for k in range(FOLDS))
            write_json(run.with_suffix(".wall.json"), {"seconds": medimg_train(
                [*COMMON, *data, "backbone=resnet18", "seed=0", f"dataset.num_folds={FOLDS}", f"dataset.fold={folds}"],
                run, data_dir, multirun=True)})
        runs = [run / str(k) for k in range(FOLDS)]
    wall = json.loads(run.with_suffix(".wall.json").read_text())["seconds"]
    return run, [figures(r) for r in runs], wall


def student(root: Path, data_dir: Path, backbone: str, name: str, teacher_path: Path | None, seed: int,
            data: list[str]) -> dict:
    run = root / "students" / f"{backbone}-{name}-{seed}"
    if not (run / "metrics.json").is_file():
        extra = [f"distill.teacher={teacher_path}"] if teacher_path else []
        seconds = medimg_train([*COMMON, *data, f"backbone={backbone}", "backbone.weights=null", f"seed={seed}", *extra],
                               run, data_dir)
        write_json(run / "wall.json", {"seconds": seconds})
    return {"student": backbone, "teacher": name, "seed": seed, **figures(run),
            "seconds": json.loads((run / "wall.json").read_text())["seconds"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--students", default="resnet18,efficientnet_b0")
    ap.add_argument("--teachers", default="none,resnet50,folds", help="none (no teacher), resnet50, folds")
    ap.add_argument("--seeds", default="42,43,44")
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--teacher-images", type=int, default=3000)
    ap.add_argument("--img-size", type=int, default=64)
    ap.add_argument("--data-dir", default=str(REPO / "benchmarks" / ".data" / "distill"))
    a = ap.parse_args()
    root = Path(a.data_dir) / f"n{a.images}-t{a.teacher_images}-px{a.img_size}"
    data_dir = Path(a.data_dir) / "data"
    data = [f"dataset.num_images={a.images}", f"dataset.img_size={a.img_size}", "dataset.generator_seed=2"]
    big = [f"dataset.num_images={a.teacher_images}", f"dataset.img_size={a.img_size}", "dataset.generator_seed=0"]
    teachers = {}
    for name in (t for t in a.teachers.split(",") if t != "none"):
        teachers[name] = teacher(root, data_dir, name, data, big)
        print(json.dumps({"teacher": name, "members": teachers[name][1], "seconds": teachers[name][2]}), flush=True)
    rows = []
    for backbone in a.students.split(","):
        for name in a.teachers.split(","):
            for seed in (int(s) for s in a.seeds.split(",")):
                path = teachers[name][0] if name != "none" else None
                rows.append(student(root, data_dir, backbone, name, path, seed, data))
                print(json.dumps(rows[-1]), flush=True)
    write_json(root / "rows.json", rows)

    print(f"Command: `python benchmarks/distill.py {' '.join(sys.argv[1:])}`\n")
    print("| teacher | members | test AUROC | test accuracy | test ECE | wall s |\n|---|---:|---:|---:|---:|---:|")
    for name, (_, members, wall) in teachers.items():
        cells = [mean_sd([m[k] for m in members]) for k in ("auroc", "accuracy", "ece")]
        print(f"| {name} | {len(members)} | {' | '.join(cells)} | {wall:.0f} |")
    print("\n| student | teacher | seeds | test AUROC | test accuracy | test ECE | wall s |\n"
          "|---|---|---:|---:|---:|---:|---:|")
    for key in dict.fromkeys((r["student"], r["teacher"]) for r in rows):
        group = [r for r in rows if (r["student"], r["teacher"]) == key]
        cells = [mean_sd([r[k] for r in group]) for k in ("auroc", "accuracy", "ece")]
        print(f"| {key[0]} | {key[1]} | {len(group)} | {' | '.join(cells)} | "
              f"{statistics.mean(r['seconds'] for r in group):.0f} |")


if __name__ == "__main__":
    main()
