"""Prediction sets and external validation of one trained run, as ``medimg.evaluate`` reports them.

    python benchmarks/conformal_sites.py --run outputs/synthetic/<date>/<time>-<id>

Four evaluations of the run's ``best.ckpt`` (each into ``<out>/<name>``, default ``<run>/benchmark_conformal``):

1. ``own_aps``: the run's own test split with the stored rules (LAC at alpha 0.1, as ``make train`` fits it),
   and refitted on its validation split with APS sets (``recalibrate=true evaluation.conformal.score=aps``);
   ``own_aps_randomized``: the same with randomised APS sets (``evaluation.conformal.randomized=true``);
2. ``own_mondrian``: the same, refitted with class-conditional (Mondrian) LAC sets;
3. ``site_b``: ``dataset=synthetic_site_b`` (the built-in set as another camera draws it) as trained and refitted
   on that site's validation split.

Prints Markdown: test coverage and mean set size against the target at each alpha (``conformal_curve.json``)
for LAC and APS, the Mondrian sets' per-class coverage with intervals, and the two sites side by side
(``site_comparison.json``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

EVALUATIONS = {
    "own_aps": ["recalibrate=true", "evaluation.conformal.score=aps"],
    "own_aps_randomized": ["recalibrate=true", "evaluation.conformal.score=aps",
                           "evaluation.conformal.randomized=true"],
    "own_mondrian": ["recalibrate=true", "evaluation.conformal.mondrian=true"],
    "site_b": ["dataset=synthetic_site_b", "recalibrate=true"],
}
ALPHAS = (0.05, 0.1, 0.2)


def evaluate(ckpt: Path, out: Path, args: list[str]) -> None:
    if (out / "metrics.json").is_file():
        return
    cmd = [sys.executable, "-m", "medimg.evaluate", f"ckpt_path={ckpt}", f"output_dir={out}",
           f"hydra.run.dir={out}/hydra", "trainer.enable_progress_bar=false", "evaluation.gallery_per_class=0", *args]
    subprocess.run(cmd, check=True)


def curve_rows(label: str, folder: Path) -> list[str]:
    curve = json.loads((folder / "conformal_curve.json").read_text())
    rows = []
    for a, cov, size, worst in zip(curve["alpha"], curve["coverage"], curve["set_size"], curve["worst_class_coverage"]):
        if round(a, 9) in ALPHAS:
            rows.append(f"| {label} | {1 - a:.2f} | {cov:.3f} | {cov - (1 - a):+.3f} | {worst:.3f} | {size:.2f} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a training run folder (holds checkpoints/best.ckpt)")
    ap.add_argument("--out", type=Path, default=None, help="where the evaluations go (<run>/benchmark_conformal)")
    a = ap.parse_args()
    out = a.out or a.run / "benchmark_conformal"
    for name, args in EVALUATIONS.items():
        evaluate(a.run / "checkpoints" / "best.ckpt", out / name, args)

    print("| sets | target | test coverage | minus target | worst class | mean set size |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join([*curve_rows("LAC (as trained)", out / "own_aps"),
                     *curve_rows("APS (refitted)", out / "own_aps" / "refitted"),
                     *curve_rows("APS randomised (refitted)", out / "own_aps_randomized" / "refitted")]))
    m = json.loads((out / "own_mondrian" / "refitted" / "metrics.json").read_text())
    print("\n| Mondrian LAC at 0.90: class | coverage [95% interval] |\n|---|---|")
    for key in sorted(k for k in m if k.endswith("/conformal_coverage") and "/per_class/" in k):
        print(f"| {key.split('/')[2]} | {m[key]:.3f} [{m[key + '_ci_low']:.3f}, {m[key + '_ci_high']:.3f}] |")
    table = json.loads((out / "site_b" / "site_comparison.json").read_text())
    cols = table["columns"]
    print("\n| | " + " | ".join(cols) + " |\n|---|" + "---|" * len(cols))
    for r in table["rows"]:
        cells = [("–" if r[c] is None else f"{r[c]['value']:.3f}" + (
            f" [{r[c]['ci_low']:.3f}, {r[c]['ci_high']:.3f}]" if r[c]["ci_low"] is not None else "")) for c in cols]
        print(f"| {r['label']} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
