"""The HTTP API and the web page of ``python -m medimg.serve``: ``create_app(settings)`` builds the FastAPI app.

Routes: ``GET /`` (the web page), ``GET /health``, ``GET /metadata``, ``POST /predict`` (one or several images),
``POST /explain`` (one image -> Grad-CAM overlay PNG), and FastAPI's ``/docs`` and ``/openapi.json``. The
app's lifespan loads the model (unless one is handed in), starts the inference threads and the batcher, and
stops them at shutdown. Uploads stream to disk under limits (uploads.py); decoding runs in ``decoders``
threads and the model in ``workers`` threads, never on the event loop. Every error is ``{"detail": "..."}``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path
from urllib.parse import quote

import anyio
import anyio.to_thread
import torch
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from medimg import __version__
from medimg.config.serve import ServeSettings
from medimg.console import LEVEL, Figure, headline_figures, number, split_images
from medimg.inference import run_dir_of
from medimg.serving.batching import DirectRunner, MicroBatcher
from medimg.serving.schemas import DISCLAIMER, ErrorBody, HeadlineFigure, Health, Metadata, PredictResponse
from medimg.serving.service import ServedModel
from medimg.serving.uploads import FIELD, RequestError, decode_uploads, receive_uploads

PAGE = Path(__file__).with_name("static") / "index.html"
ERRORS = {
    400: {"model": ErrorBody, "description": "a malformed or empty upload, a form part that is not an image file"},
    413: {"model": ErrorBody, "description": "too many files, a file over the byte cap, an image over the pixel "
                                             "or aspect-ratio cap"},
    415: {"model": ErrorBody, "description": "the body is not multipart/form-data, or a file is not an image type"},
    422: {"model": ErrorBody, "description": "a file that cannot be decoded as an image (or is truncated); a bad "
                                             "query parameter"},
}


# headline figure -> its plain words ({pos}, {neg}: a binary task's positive and negative class), a percentage?
PLAIN = {"accuracy": ("Accuracy (images classified correctly)", True),
         "balanced_accuracy": ("Balanced accuracy (the mean over the classes of their images classified "
                               "correctly)", True),
         "auroc": ("Area under the ROC curve (1 = every image ranked right, 0.5 = chance)", False),
         "pr_auc": ("Average precision (area under the precision-recall curve, 1 = perfect)", False),
         "sensitivity": ("Sensitivity ({pos} images called {pos})", True),
         "specificity": ("Specificity ({neg} images called {neg})", True)}
OPERATING = ("test/sensitivity", "test/specificity", "test/threshold")


def run_metrics(ckpt: str | Path | None) -> tuple[dict[str, float], float]:
    """The checkpoint's run: its metrics.json (empty when there is none) and its interval level."""
    if not ckpt:
        return {}, LEVEL
    run = run_dir_of(ckpt)
    try:
        metrics = json.loads((run / "metrics.json").read_text())
    except (OSError, ValueError):
        return {}, LEVEL
    level, config = None, run / ".hydra" / "config.yaml"
    if config.is_file():
        from omegaconf import OmegaConf

        try:
            level = OmegaConf.select(OmegaConf.load(config), "evaluation.interval_level")
        except Exception:  # an unreadable config: the default level
            level = None
    return metrics, float(level) if isinstance(level, int | float) else LEVEL


def plain_figure(f: Figure, level: float, names: list[str]) -> HeadlineFigure:
    words, percent = PLAIN[f.name]
    def shown(v: float) -> str:
        return f"{100 * v:.1f}" if percent else f"{v:.3f}"

    text = f"{words.format(pos=names[-1], neg=names[0])}: {shown(f.value)}{'%' if percent else ''}"
    if f.low is not None and f.high is not None:
        text += f" ({100 * level:g}% interval {shown(f.low)}-{shown(f.high)}{'%' if percent else ''})"
    return HeadlineFigure(metric=f.key, value=f.value, low=f.low, high=f.high, text=text)


def calibration_figure(metrics: dict[str, float], calibrated: bool) -> HeadlineFigure | None:
    before, after = number(metrics, "test/ece"), number(metrics, "test/ece_calibrated")
    if calibrated and after is not None:
        was = f", {100 * before:.1f} before calibration" if before is not None else ""
        return HeadlineFigure(metric="test/ece_calibrated", value=after, text=(
            f"Calibration: a stated probability was off by {100 * after:.1f} percentage points on average "
            f"(expected calibration error{was})"))
    if before is None:
        return None
    return HeadlineFigure(metric="test/ece", value=before, text=(
        f"Calibration: none (plain softmax outputs); a stated probability was off by {100 * before:.1f} "
        "percentage points on average (expected calibration error)"))


def described(served: ServedModel) -> Metadata:
    """``/metadata``: the served model's description with the training run's headline test figures in plain
    words. A model served uncalibrated is described by its run's uncalibrated figures."""
    meta = served.metadata
    metrics, level = run_metrics(served.source_checkpoint)
    if not meta.calibrated and any(k.endswith("_calibrated") for k in metrics):  # its decisions differ from the run's
        metrics = {k: v for k, v in metrics.items() if "_calibrated" not in k and not k.startswith(OPERATING)}
    figures = [plain_figure(f, level, meta.class_names) for f in headline_figures(metrics)]
    ece = calibration_figure(metrics, meta.calibrated)
    return meta.model_copy(update={"headline": figures + ([ece] if ece else []),
                                   "test_images": split_images(metrics)})


def upload_body(max_files: int) -> dict:
    """The OpenAPI description of the multipart body (read by uploads.py, not by FastAPI's form parsing)."""
    files = {"type": "array", "minItems": 1, "maxItems": max_files, "items": {"type": "string", "format": "binary"},
             "description": "the image file(s): JPEG, PNG, TIFF, BMP, WebP or DICOM"}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": [FIELD], "properties": {FIELD: files}}}}}}


def create_app(s: ServeSettings, model: ServedModel | None = None) -> FastAPI:
    """The app for settings ``s``; ``model``: an already loaded model (else the lifespan loads it)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served = model or ServedModel(s)
        executor = ThreadPoolExecutor(s.inference.workers, thread_name_prefix="medimg-model")
        i = s.inference
        runner = MicroBatcher(served.probs, executor, i.max_batch, i.max_wait_ms / 1000) \
            if i.batching_for(s.engine) else DirectRunner(served.probs, executor)
        await runner.start()
        app.state.served, app.state.runner, app.state.executor = served, runner, executor
        app.state.metadata = described(served)
        app.state.decoders = anyio.CapacityLimiter(i.decoders)
        try:
            yield
        finally:
            await runner.stop()
            executor.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="medimg", version=__version__, lifespan=lifespan,
                  description=f"Image classification with a trained medimg model. {DISCLAIMER}")
    app.add_exception_handler(RequestError, _request_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    _routes(app, s)
    return app


async def _request_error(request: Request, e: RequestError) -> JSONResponse:
    return JSONResponse({"detail": str(e)}, status_code=e.status)


async def _validation_error(request: Request, e: RequestValidationError) -> JSONResponse:
    parts = [f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}" for err in e.errors()]
    return JSONResponse({"detail": "; ".join(parts) or "invalid request"}, status_code=422)


async def received_images(request: Request, max_files: int | None = None) -> tuple[list[str], torch.Tensor]:
    """The request's images, prepared as the model's evaluation split was; the uploads are deleted after."""
    served: ServedModel = request.app.state.served
    limits = served.limits if max_files is None else replace(served.limits, max_files=max_files)
    folder = Path(tempfile.mkdtemp(prefix="medimg-upload-"))
    try:
        uploads = await receive_uploads(request, limits, folder)
        x = await anyio.to_thread.run_sync(decode_uploads, uploads, served.transform, limits.image,
                                           limiter=request.app.state.decoders)
    finally:
        await anyio.to_thread.run_sync(shutil.rmtree, folder, True)
    return [u.filename for u in uploads], x


def _routes(app: FastAPI, s: ServeSettings) -> None:
    page = PAGE.read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health", response_model=Health, summary="The model is loaded and the server answers")
    async def health(request: Request) -> Health:
        served: ServedModel = request.app.state.served
        return Health(status="ok", engine=served.engine.name, num_classes=len(served.class_names))

    @app.get("/metadata", response_model=Metadata, summary="Classes, calibration, preprocessing, test metrics")
    async def metadata(request: Request) -> Metadata:
        return request.app.state.metadata

    @app.post("/predict", response_model=PredictResponse, responses=ERRORS, openapi_extra=upload_body(
        s.limits.max_files), summary="Calibrated class probabilities of one or several images")
    async def predict(request: Request, top_k: int | None = Query(
            None, ge=1, le=1000, description=f"classes in each top_k list (default {s.top_k})")) -> PredictResponse:
        served: ServedModel = request.app.state.served
        names, x = await received_images(request)
        probs = await request.app.state.runner.probs(x)
        return PredictResponse(engine=served.engine.name, calibrated=served.metadata.calibrated,
                               calibration_note=served.metadata.calibration_note,
                               results=served.results(names, probs, top_k or s.top_k))

    @app.post("/explain", response_class=Response, openapi_extra=upload_body(1), summary="Grad-CAM overlay (PNG)",
              responses={200: {"content": {"image/png": {}}, "description": "the image with the Grad-CAM heat map "
                                                                            "blended over it, at the model's input size"},
                         404: {"model": ErrorBody, "description": "Grad-CAM is not available (the server "
                                                                  "has no checkpoint)"}, **ERRORS})
    async def explain(request: Request, target: str | None = Query(
            None, max_length=200, description="the class to explain (default: the decided class)")) -> Response:
        served: ServedModel = request.app.state.served
        _, x = await received_images(request, max_files=1)
        if served.cam_model is None:
            raise RequestError(404, "Grad-CAM needs the checkpoint: start the server with ckpt_path=")
        if target is not None and target not in served.class_names:
            raise RequestError(422, f"target {target!r} is not a class of this model; choose one of "
                                    f"{served.class_names} or leave it out (the decided class)")
        png, explained, probability = await asyncio.get_running_loop().run_in_executor(
            request.app.state.executor, served.explain_png, x, target)
        return Response(png, media_type="image/png", headers={
            "X-Medimg-Class": quote(explained), "X-Medimg-Probability": f"{probability:.6f}"})
