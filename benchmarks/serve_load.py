"""Load test of ``python -m medimg.serve`` with a real HTTP client on loopback.

It builds its own model: an untrained ResNet18 classifier (random weights: speed does not depend on them) made
through medimg as a run makes it, saved as a medimg checkpoint and exported to ONNX with ``medimg.export``.
For each engine (torch, onnx) and each batching setting (micro-batching on, off) it starts the real server in
its own process, sends a few warm-up requests, then at each concurrency level sends ``--requests`` POST
/predict requests of one JPEG (600x450, the size of a HAM10000 image) from that many concurrent asyncio httpx
clients, and reports requests/s, p50 and p99 latency, failed requests (anything but 200) out of those sent,
and the server's resident memory before the load, after it, and at its peak.

    python benchmarks/serve_load.py                                  # 224 px, 200 requests per level
    python benchmarks/serve_load.py --requests 100 --concurrency 1 8 --engines torch --json out.json
    python benchmarks/serve_load.py --batching on --set inference.max_wait_ms=0 inference.decoders=1
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from PIL import Image
from throughput.build import compose, settings

from medimg.export import export_onnx
from medimg.files import save_torch, write_json
from medimg.inference import checkpoint_entry
from medimg.serving.process import running_server
from medimg.training.model import classifier_of

CLASSES = ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]


def make_checkpoint(folder: Path, backbone: str, img_size: int) -> Path:
    """An untrained classifier as a run builds it, saved as a medimg checkpoint, with model.onnx beside it."""
    s, rt = settings(compose([f"backbone={backbone}", "backbone.weights=null", f"dataset.img_size={img_size}",
                              "seed=0"]))
    model = classifier_of(s, rt, CLASSES, None, None).eval()
    phase = {"name": "full", "train_blocks": "all", "lr": 0.0, "epochs": 0}
    ckpt = save_torch({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                       "medimg": checkpoint_entry(phase, {}, CLASSES, {}, True, None)}, folder / "best.ckpt")
    export_onnx(ckpt, folder / "model.onnx", opset=17, check=True, atol=1e-4)
    return ckpt


def make_image(path: Path) -> bytes:
    """A 600x450 JPEG with smooth structure and noise (about the bytes of a dermatoscopy photo)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:450, 0:600]
    base = np.stack([128 + 80 * np.sin(xx / 40), 128 + 80 * np.cos(yy / 30), 128 + 60 * np.sin((xx + yy) / 50)], -1)
    pixels = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path, quality=90)
    return path.read_bytes()


async def _client(client: httpx.AsyncClient, url: str, image: bytes, todo: list[int], latencies: list[float],
                  failures: list[str]) -> None:
    while todo:
        todo.pop()
        t0 = time.perf_counter()
        try:
            r = await client.post(url, files={"files": ("lesion.jpg", image, "image/jpeg")})
            ok = r.status_code == 200 and len(r.json()["results"]) == 1
            if not ok:
                failures.append(f"{r.status_code}: {r.text[:200]}")
        except httpx.HTTPError as e:
            failures.append(repr(e))
        latencies.append(time.perf_counter() - t0)


async def load(base: str, image: bytes, requests: int, concurrency: int) -> dict:
    """``requests`` POST /predict from ``concurrency`` clients at once; latencies, throughput, failures."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    latencies: list[float] = []
    failures: list[str] = []
    todo = list(range(requests))
    async with httpx.AsyncClient(limits=limits, timeout=300) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(_client(client, f"{base}/predict", image, todo, latencies, failures)
                               for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    ms = np.array(latencies) * 1000
    return {"concurrency": concurrency, "requests": len(latencies), "failed": len(failures),
            "failures": failures[:5], "req_s": len(latencies) / wall, "p50_ms": float(np.percentile(ms, 50)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(statistics.fmean(ms))}


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bench_server(ckpt: Path, engine: str, batching: bool, args, image: bytes, workdir: Path) -> list[dict]:
    overrides = [f"ckpt_path={ckpt}", f"engine={engine}", f"inference.batching={str(batching).lower()}",
                 "log_level=warning", f"hydra.run.dir={workdir / f'server-{engine}-{batching}'}",
                 f"limits.max_connections={max(args.concurrency) + 8}", *args.set]
    rows = []
    with running_server(overrides, workdir / f"{engine}-{batching}.log") as server:
        before = server.rss_mib()
        asyncio.run(load(server.url, image, args.warmup, 1))
        for c in args.concurrency:
            r = asyncio.run(load(server.url, image, args.requests, c))
            r.update(engine=engine, batching=batching, rss_before_mib=before, rss_after_mib=server.rss_mib(),
                     rss_peak_mib=peak_rss_mib(server.process.pid))
            print(f"  {engine:5s} batching={str(batching):5s} c={c:3d}: {r['req_s']:6.1f} req/s  p50 {r['p50_ms']:7.1f} "
                  f"ms  p99 {r['p99_ms']:7.1f} ms  failed {r['failed']}/{r['requests']}  RSS {before:.0f} -> "
                  f"{r['rss_after_mib']:.0f} MiB (peak {r['rss_peak_mib']:.0f})", flush=True)
            rows.append(r)
    return rows


COLUMNS = [  # (heading, cell of a result row)
    ("engine", lambda r: r["engine"]), ("micro-batching", lambda r: "on" if r["batching"] else "off"),
    ("concurrency", lambda r: r["concurrency"]), ("requests", lambda r: r["requests"]), ("failed", lambda r: r["failed"]),
    ("req/s", lambda r: f"{r['req_s']:.1f}"), ("p50 ms", lambda r: f"{r['p50_ms']:.1f}"),
    ("p99 ms", lambda r: f"{r['p99_ms']:.1f}"), ("RSS before MiB", lambda r: f"{r['rss_before_mib']:.0f}"),
    ("RSS after MiB", lambda r: f"{r['rss_after_mib']:.0f}"), ("peak RSS MiB", lambda r: f"{r['rss_peak_mib']:.0f}"),
]


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(name for name, _ in COLUMNS) + " |",
             "|" + "|".join("---" if i < 2 else "---:" for i in range(len(COLUMNS))) + "|"]
    lines += ["| " + " | ".join(str(cell(r)) for _, cell in COLUMNS) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="resnet18")
    ap.add_argument("--img-size", type=int, default=224)
    ap.add_argument("--requests", type=int, default=200, help="requests per concurrency level")
    ap.add_argument("--warmup", type=int, default=10, help="requests before the measured ones")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    ap.add_argument("--engines", nargs="+", default=["torch", "onnx"], choices=["torch", "onnx"])
    ap.add_argument("--batching", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="more server overrides, e.g. inference.decoders=1 threads=2")
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="medimg-serve-load-") as tmp:
        workdir = Path(tmp)
        ckpt = make_checkpoint(workdir, args.backbone, args.img_size)
        image = make_image(workdir / "lesion.jpg")
        print(f"{args.backbone} at {args.img_size} px, {len(CLASSES)} classes; one {len(image):,}-byte JPEG per "
              f"request; {os.cpu_count()} CPU cores shared by the server and this client", flush=True)
        rows = [r for engine in args.engines for b in args.batching
                for r in bench_server(ckpt, engine, b == "on", args, image, workdir)]
    print(to_markdown(rows))
    if args.json:
        write_json(args.json, {"backbone": args.backbone, "img_size": args.img_size, "rows": rows})
    failed = sum(r["failed"] for r in rows)
    if failed:
        raise SystemExit(f"{failed} request(s) failed")


if __name__ == "__main__":
    main()
