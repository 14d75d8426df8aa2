"""medimg.serve: the real server in its own process on a free loopback port, real HTTP requests (httpx).

Predictions equal medimg.predict's for the same images and checkpoint; Grad-CAM overlays equal
the ones computed directly; every kind of bad input gets a 4xx JSON error that names it while the server keeps
serving; concurrent requests lose nothing; an oversized upload does not grow the server's memory; the OpenAPI
schema is fuzzed with schemathesis.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from PIL import Image

from medimg.inference import load_trained
from medimg.predict import predict
from medimg.serving.process import running_server
from tests.conftest import command_config

LIMITS = ["limits.max_files=3", "limits.max_file_bytes=200000", "limits.max_image_pixels=1000000",
          "limits.max_aspect_ratio=10"]


def image_bytes(seed: int, size=(40, 30), fmt="PNG", mode="RGB") -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(rgb).convert(mode).save(buffer, format=fmt)
    return buffer.getvalue()


def bomb_png(width=20000, height=10000) -> bytes:
    """A few hundred bytes whose PNG header claims width x height pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + chunk(b"IEND", b""))


def part(name: str, data: bytes, ctype: str = "image/png", field: str = "files"):
    return (field, (name, data, ctype))


def served_probs(result: dict) -> np.ndarray:
    return np.array(list(result["probabilities"].values()))


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("serve_images")
    (folder / "rgb.png").write_bytes(image_bytes(1))
    (folder / "photo.jpg").write_bytes(image_bytes(2, (64, 48), fmt="JPEG"))
    (folder / "gray.png").write_bytes(image_bytes(3, mode="L"))
    return folder


@pytest.fixture(scope="module")
def server(tiny_ckpt, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_torch")
    with running_server([f"ckpt_path={tiny_ckpt}", f"hydra.run.dir={tmp / 'run'}", *LIMITS], tmp / "server.log") as s:
        yield s


def predict_rows(ckpt: Path, folder: Path, out: Path, *overrides: str) -> dict[str, dict]:
    cfg = command_config("predict", out, f"ckpt_path={ckpt}", f"input={folder}", f"output_dir={out}", "device=cpu",
                         *overrides)
    return {Path(r["path"]).name: r for r in predict(cfg).rows}


def post_images(url: str, folder: Path, names: list[str], endpoint: str = "predict", **params) -> httpx.Response:
    files = [part(n, (folder / n).read_bytes(), "image/jpeg" if n.endswith(".jpg") else "image/png") for n in names]
    return httpx.post(f"{url}/{endpoint}", files=files, params=params, timeout=60)


def check_equal_to_predict(response: httpx.Response, expected: dict[str, dict], class_names: list[str]) -> None:
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["filename"] for r in results] == list(expected)
    for r in results:
        want = np.array([expected[r["filename"]][f"p_{c}"] for c in class_names])
        assert list(r["probabilities"]) == class_names
        np.testing.assert_allclose(served_probs(r), want, atol=1e-5)
        assert r["prediction"] == expected[r["filename"]]["prediction"]
        assert [t["class_name"] for t in r["top_k"]] == [class_names[j] for j in np.argsort(-want)[:3]]


def test_health_metadata_and_docs(server, tiny_ckpt):
    trained = load_trained(tiny_ckpt)
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "engine": "torch", "num_classes": 4}
    meta = httpx.get(f"{server.url}/metadata").json()
    assert meta["class_names"] == trained.class_names and meta["backbone"] == "resnet18"
    assert meta["calibrated"] is trained.is_calibrated and meta["calibration_note"] == trained.calibration_note
    assert meta["preprocessing"]["img_size"] == 32 and meta["preprocessing"]["mean"] == list(trained.preprocess.mean)
    metrics = json.loads((tiny_ckpt.parents[1] / "metrics.json").read_text())
    assert meta["test_metrics"]["test/accuracy"] == pytest.approx(metrics["test/accuracy"])
    assert not any("/per_class/" in k or "_ci_" in k for k in meta["test_metrics"])
    assert meta["limits"] == {"max_files": 3, "max_file_bytes": 200000, "max_image_pixels": 1000000,
                              "max_aspect_ratio": 10.0}
    assert meta["explain_available"] is True and "research use" in meta["disclaimer"].lower()
    docs = httpx.get(f"{server.url}/docs")
    assert docs.status_code == 200 and "swagger" in docs.text.lower()
    schema = httpx.get(f"{server.url}/openapi.json").json()
    body = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["maxItems"] == 3
    page = httpx.get(f"{server.url}/")
    assert page.status_code == 200 and 'id="file"' in page.text
    accuracy = meta["headline"][0]  # the headline figures in plain words, with their intervals
    key = accuracy["metric"]
    assert key == "test/accuracy_calibrated" and accuracy["value"] == pytest.approx(metrics[key])
    assert (accuracy["low"], accuracy["high"]) == (pytest.approx(metrics[f"{key}_ci_low"]),
                                                  pytest.approx(metrics[f"{key}_ci_high"]))
    assert accuracy["text"].startswith(f"Accuracy (images classified correctly): {100 * metrics[key]:.1f}% "
                                       f"(95% interval {100 * metrics[f'{key}_ci_low']:.1f}-")
    assert '<details id="technical">' in page.text  # calibrator and raw metrics: collapsed, one click away


def test_probabilities_equal_medimg_predict(server, tiny_ckpt, images, tmp_path):
    expected = predict_rows(tiny_ckpt, images, tmp_path)
    names = list(expected)  # predict's order: sorted file names
    check_equal_to_predict(post_images(server.url, images, names), expected, load_trained(tiny_ckpt).class_names)
    one = post_images(server.url, images, names[:1], top_k=1).json()["results"][0]
    assert len(one["top_k"]) == 1 and one["top_k"][0]["class_name"] == one["prediction"]
    assert one["decision"] is None  # four classes: the most probable one is the decision


def expected_overlay(ckpt: Path, image: Path, target: int | None) -> tuple[np.ndarray, int]:
    """The overlay and explained class of ``image``, computed in this process."""
    from medimg.data.readers import read_image
    from medimg.engines import decide
    from medimg.explain.gradcam import compute_cams, denormalise, overlay

    trained = load_trained(ckpt)
    x = trained.preprocess.transform()(read_image(image))[None]
    with torch.no_grad():
        probs = trained.probs(trained.model(x)).numpy()
    index = decide(probs, trained.threshold)[0] if target is None else target
    cams = compute_cams(trained.model, x, [index])
    return overlay(denormalise(x[0], trained.preprocess.mean, trained.preprocess.std), cams[0]), index


@pytest.mark.parametrize("target", [None, 2])
def test_explain_returns_the_gradcam_overlay(server, tiny_ckpt, images, target):
    names = load_trained(tiny_ckpt).class_names
    params = {} if target is None else {"target": names[target]}
    response = post_images(server.url, images, ["rgb.png"], endpoint="explain", **params)
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    got = np.asarray(Image.open(io.BytesIO(response.content)))
    want, index = expected_overlay(tiny_ckpt, images / "rgb.png", target)
    assert got.shape == (32, 32, 3) and response.headers["x-medimg-class"] == names[index]
    # the server process may run on another number of threads: the maps agree to rounding, not bit for bit
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


def bad_requests() -> dict[str, tuple[dict, int, str]]:
    """name -> (httpx arguments, expected status, a word the error must contain)."""
    good = image_bytes(5)
    return {
        "not an image": ({"files": [part("notes.png", b"plain text, not pixels")]}, 422, "notes.png"),
        "truncated": ({"files": [part("cut.png", good[: len(good) // 2])]}, 422, "cut.png"),
        "too many bytes": ({"files": [part("big.bmp", image_bytes(6, (300, 250), fmt="BMP"))]}, 413, "200,000 bytes"),
        "too many pixels": ({"files": [part("bomb.png", bomb_png())]}, 413, "max_image_pixels"),
        "aspect ratio": ({"files": [part("strip.png", image_bytes(7, (500, 20)))]}, 413, "aspect ratio"),
        "wrong part type": ({"files": [part("x.txt", b"hello", "text/plain")]}, 415, "text/plain"),
        "not multipart": ({"json": {"image": "x"}}, 415, "multipart/form-data"),
        "too many files": ({"files": [part(f"{i}.png", good) for i in range(4)]}, 413, "at most 3"),
        "empty body": ({"content": b""}, 400, "empty"),
        "empty file": ({"files": [part("zero.png", b"")]}, 400, "zero.png"),
        "wrong field": ({"files": [part("a.png", good, field="image")]}, 400, "'image'"),
        "text field": ({"data": {"files": "not a file"}, "files": [part("a.png", good, field="other")]}, 400, "files"),
        "malformed": ({"content": b"--x\r\ngarbage", "headers": {"content-type": "multipart/form-data; boundary=y"}},
                      400, "multipart"),
        "bad top_k": ({"files": [part("a.png", good)], "params": {"top_k": 0}}, 422, "top_k"),
    }


@pytest.mark.parametrize("case", list(bad_requests()))
def test_bad_input_is_a_4xx_naming_it_and_the_server_goes_on(server, case):
    kwargs, status, word = bad_requests()[case]
    response = httpx.post(f"{server.url}/predict", timeout=60, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert word.lower() in response.json()["detail"].lower()
    assert server.process.poll() is None
    ok = httpx.post(f"{server.url}/predict", files=[part("ok.png", image_bytes(8))], timeout=60)
    assert ok.status_code == 200 and len(ok.json()["results"]) == 1


def test_explain_refuses_two_images_and_unknown_targets(server, images):
    two = post_images(server.url, images, ["rgb.png", "gray.png"], endpoint="explain")
    assert two.status_code == 413 and "at most 1" in two.json()["detail"]
    unknown = post_images(server.url, images, ["rgb.png"], endpoint="explain", target="tumour")
    assert unknown.status_code == 422 and "'tumour' is not a class" in unknown.json()["detail"]


async def _concurrent(url: str, uploads: list[list[tuple]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=len(uploads))) as client:
        return await asyncio.gather(*(client.post(f"{url}/predict", files=u) for u in uploads))


def test_concurrent_requests_lose_nothing(server):
    """24 requests at once (1 to 3 images each, 48 in all, batched together): each gets its own images back."""
    blobs = {f"img{i}.png": image_bytes(100 + i) for i in range(48)}
    names, uploads, start = list(blobs), [], 0
    for i in range(24):  # 1, 2, 3, 1, 2, 3, ... images: 48 in all
        uploads.append([part(name, blobs[name]) for name in names[start:start + 1 + i % 3]])
        start += 1 + i % 3
    alone = {name: served_probs(httpx.post(f"{server.url}/predict", files=[part(name, blobs[name])],
                                           timeout=60).json()["results"][0]) for name in names}
    responses = asyncio.run(_concurrent(server.url, uploads))
    assert [r.status_code for r in responses] == [200] * len(uploads)
    for upload, response in zip(uploads, responses):
        results = response.json()["results"]
        assert [r["filename"] for r in results] == [p[1][0] for p in upload]
        for r in results:
            np.testing.assert_allclose(served_probs(r), alone[r["filename"]], atol=1e-5)


def test_an_endless_upload_is_cut_off_without_growing_memory(server):
    before = server.rss_mib()

    def endless():
        yield b"--b\r\nContent-Disposition: form-data; name=\"files\"; filename=\"huge.png\"\r\n" \
              b"Content-Type: image/png\r\n\r\n"
        for _ in range(2000):  # 128 MB if the server read it all
            yield b"\0" * 65536

    try:
        response = httpx.post(f"{server.url}/predict", content=endless(), timeout=60,
                              headers={"content-type": "multipart/form-data; boundary=b"})
        assert response.status_code == 413 and "200,000 bytes" in response.json()["detail"]
    except httpx.TransportError:
        pass  # the server stopped reading after the cap and closed the connection: also a refusal
    assert server.rss_mib() - before < 30
    assert httpx.get(f"{server.url}/health").status_code == 200


def test_bombs_at_concurrency_8_keep_memory_bounded(server, tmp_path):
    """8 clients at once, each sending a deflated DICOM that would inflate to 150 MiB (under 200 KB on the wire)
    and a PNG whose header claims 20000 x 10000 pixels: every request is a 4xx naming the problem, the server's
    peak memory stays under twice its idle memory, and /health answers throughout."""
    import threading

    from tests.test_data_deflated_dicom import _bomb

    dicom = _bomb(tmp_path / "bomb.dcm", inflated_mib=150).read_bytes()
    assert len(dicom) < 200_000
    idle = server.rss_mib()
    peak, stop = [idle], threading.Event()

    def sample():
        while not stop.is_set():
            peak.append(server.rss_mib())
            stop.wait(0.02)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        uploads = [[part("bomb.dcm", dicom, "application/dicom")] if i % 2 == 0 else [part("bomb.png", bomb_png())]
                   for i in range(8)]
        responses = asyncio.run(_concurrent(server.url, uploads))
        health = httpx.get(f"{server.url}/health", timeout=10).status_code
    finally:
        stop.set()
        sampler.join()
    for upload, response in zip(uploads, responses):
        assert 400 <= response.status_code < 500, response.text
        said = response.json()["detail"]
        assert ("inflates past" in said) if upload[0][1][0] == "bomb.dcm" else ("pixels" in said), said
    assert health == 200
    assert max(peak) < 2 * idle, f"idle {idle:.0f} MiB, peak {max(peak):.0f} MiB"
