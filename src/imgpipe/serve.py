"""``imgpipe serve``: the exported ONNX model behind a FastAPI app.

Everything the service knows about the model comes from ``model.onnx`` itself (classes, input
size, channels; normalisation is inside the graph), and uploads are decoded by
:func:`~imgpipe.images.decode_image`, the function preprocess used for the training data.

Concurrency: uploads are decoded in worker threads; inference runs on one dedicated thread fed by
a :class:`MicroBatcher`, which joins the images of concurrent requests into one onnxruntime call
(waiting at most a short window for company), so the event loop never blocks on the model and
throughput under load approaches onnxruntime's batch throughput.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import queue
import subprocess
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from logging.handlers import RotatingFileHandler
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import orjson
import yaml
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client import generate_latest as prometheus_text
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgpipe import __version__
from imgpipe.features import OnnxClassifier, embedding_column_names, image_statistics
from imgpipe.images import ImageDecodeError, ImageTooLargeError, NotAnImageError, decode_image
from imgpipe.model import file_sha256

log = logging.getLogger(__name__)

# Formats Pillow may open here: common photo/scan formats only. Pillow's EPS plugin, for one,
# would hand uploads to Ghostscript.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "TIFF", "WEBP")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
AsgiApp = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True)
class ServeConfig:
    """How the service runs; every field has an ``imgpipe serve`` option."""

    model: Path
    max_upload_bytes: int = 16 * 2**20  # whole request body
    max_images: int = 32  # files per request
    max_pixels: int = 25_000_000  # per image, checked before decoding (decompression bombs)
    batch_window_ms: float = 2.0  # how long a lone request waits for company
    max_batch: int = 64  # images per onnxruntime call
    threads: int = 0  # onnxruntime intra-op threads; 0 = all cores
    feature_log: Path | None = None  # JSON lines of per-image features; None = no log
    feature_log_max_bytes: int = 50 * 2**20  # rotate after this size ...
    feature_log_backups: int = 10  # ... keeping this many old files


# --- model identity -------------------------------------------------------------------------


def model_commit(model: Path) -> str | None:
    """The git commit the model was built from, when it can be known.

    ``IMGPIPE_MODEL_COMMIT`` wins (set it in images and deployments). Otherwise, inside a
    checkout whose ``dvc.lock`` records this very file (same md5), it is that checkout's HEAD.
    """
    if commit := os.environ.get("IMGPIPE_MODEL_COMMIT"):
        return commit
    model = model.resolve()
    for root in model.parents:
        lock = root / "dvc.lock"
        if lock.is_file():
            break
    else:
        return None
    try:
        stages = (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
        recorded = {
            (root / out["path"]).resolve(): out.get("md5")
            for stage in stages.values()
            for out in stage.get("outs", [])
        }
        if recorded.get(model) != hashlib.md5(model.read_bytes()).hexdigest():
            return None
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True
        )
    except (OSError, yaml.YAMLError, subprocess.CalledProcessError, AttributeError):
        return None
    return head.stdout.strip() or None


# --- micro-batching -------------------------------------------------------------------------

Outputs = tuple[np.ndarray, np.ndarray]  # probabilities, embeddings


@dataclass
class _Pending:
    images: np.ndarray
    future: asyncio.Future[Outputs]


class MicroBatcher:
    """Joins the images of concurrent requests into batches for one inference thread.

    A batch starts with whatever is queued; when that is less than ``max_batch`` images it waits
    up to ``window_s`` for more. While a batch runs, new requests queue up and form the next one,
    so under load batches fill without waiting.
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], Outputs],
        max_batch: int,
        window_s: float,
        on_batch: Callable[[int], None] = lambda size: None,
    ) -> None:
        self._infer = infer
        self._max_batch = max_batch
        self._window_s = window_s
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="imgpipe-inference")
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> MicroBatcher:
        self._task = asyncio.create_task(self._run(), name="imgpipe-batcher")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        self._executor.shutdown(wait=True)

    async def predict(self, images: np.ndarray) -> Outputs:
        """Probabilities and embeddings for ``N x H x W x C`` uint8 images."""
        future: asyncio.Future[Outputs] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(images, future))
        return await future

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            pending = [await self._queue.get()]
            deadline = loop.time() + self._window_s
            while (count := sum(len(p.images) for p in pending)) < self._max_batch:
                try:
                    pending.append(self._queue.get_nowait())
                    continue
                except asyncio.QueueEmpty:
                    pass
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                try:
                    pending.append(await asyncio.wait_for(self._queue.get(), remaining))
                except TimeoutError:
                    break
            batch = np.concatenate([p.images for p in pending])
            self._on_batch(count)
            try:
                probabilities, embeddings = await loop.run_in_executor(
                    self._executor, self._infer, batch
                )
            except Exception as error:  # every waiting request gets the failure
                for p in pending:
                    if not p.future.done():
                        p.future.set_exception(error)
                continue
            offset = 0
            for p in pending:
                end = offset + len(p.images)
                if not p.future.done():  # its client may have gone away
                    p.future.set_result((probabilities[offset:end], embeddings[offset:end]))
                offset = end


# --- request feature log --------------------------------------------------------------------


class FeatureLog:
    """Per-image features (the drift baseline's columns) appended as JSON lines by a background
    thread, so requests only pay for a queue put. Files rotate by size:
    ``requests.jsonl``, ``requests.1.jsonl``, ... (each readable by ``imgpipe drift``)."""

    def __init__(
        self,
        path: Path,
        classes: list[str],
        *,
        max_bytes: int,
        backups: int,
        on_drop: Callable[[int], None] = lambda images: None,
        capacity: int = 10_000,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._classes = classes
        self._on_drop = on_drop
        self._handler = RotatingFileHandler(path, maxBytes=max_bytes, backupCount=backups)
        self._handler.namer = _numbered_before_suffix
        self._queue: queue.Queue[tuple[dict[str, Any], np.ndarray, Outputs] | None] = queue.Queue(
            capacity
        )
        self._thread = threading.Thread(target=self._write, name="imgpipe-feature-log", daemon=True)
        self._thread.start()

    def submit(self, context: dict[str, Any], images: np.ndarray, outputs: Outputs) -> None:
        """Queue one request's rows; when the writer is far behind they are dropped, not
        waited for."""
        try:
            self._queue.put_nowait((context, images, outputs))
        except queue.Full:
            self._on_drop(len(images))

    def close(self) -> None:
        """Write what is queued, then stop."""
        self._queue.put(None)
        self._thread.join()
        self._handler.close()

    def _write(self) -> None:
        while True:
            items = [self._queue.get()]
            while len(items) < 256:  # whatever else is queued joins this round
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch = [item for item in items if item is not None]
            try:
                if batch:
                    self._handler.emit(logging.makeLogRecord({"msg": self._lines(batch)}))
            except Exception:  # a bad row must not stop the writer
                log.exception("feature log: could not write %d requests' rows", len(batch))
                self._on_drop(sum(len(images) for _, images, _ in batch))
            if len(batch) < len(items):  # close() was called
                return

    def _lines(self, batch: list[tuple[dict[str, Any], np.ndarray, Outputs]]) -> str:
        """The JSON lines of several requests, built column-wise (per-row pandas would cost
        requests milliseconds of GIL time)."""
        images = np.concatenate([images for _, images, _ in batch])
        probabilities = np.concatenate([outputs[0] for _, _, outputs in batch])
        embeddings = np.concatenate([outputs[1] for _, _, outputs in batch])
        contexts = [context for context, part, _ in batch for _ in range(len(part))]
        statistics = {name: values.tolist() for name, values in image_statistics(images).items()}
        predicted = [self._classes[i] for i in probabilities.argmax(axis=1)]
        confidence = probabilities.max(axis=1).tolist()
        names = embedding_column_names(embeddings.shape[1])
        lines = []
        for row, (context, vector) in enumerate(zip(contexts, embeddings.tolist(), strict=True)):
            record = {
                **context,
                **{name: values[row] for name, values in statistics.items()},
                "predicted": predicted[row],
                "confidence": confidence[row],
                **dict(zip(names, vector, strict=True)),
            }
            lines.append(orjson.dumps(record).decode())
        return "\n".join(lines)


def _numbered_before_suffix(name: str) -> str:
    """``requests.jsonl.3`` -> ``requests.3.jsonl``: rotated logs keep their suffix."""
    stem, _, number = name.rpartition(".")
    base, dot, suffix = stem.rpartition(".")
    return f"{base}.{number}.{suffix}" if dot else name


# --- metrics --------------------------------------------------------------------------------

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)


@dataclass
class ServiceMetrics:
    """Prometheus series of one app (own registry, so several apps can live in one process)."""

    classes: list[str]
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.requests = Counter(
            "imgpipe_http_requests", "HTTP requests by route and status", ["route", "status"],
            registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "imgpipe_http_request_duration_seconds", "Time from request to response by route",
            ["route"], buckets=LATENCY_BUCKETS, registry=r,
        )  # fmt: skip
        self.errors = Counter(
            "imgpipe_errors", "Requests refused or failed, by reason", ["reason"], registry=r
        )
        self.predictions = Counter(
            "imgpipe_predictions", "Images classified, by top-1 class", ["predicted"], registry=r
        )
        self.confidence = Histogram(
            "imgpipe_prediction_confidence", "Top-1 probability of each classified image",
            buckets=CONFIDENCE_BUCKETS, registry=r,
        )  # fmt: skip
        self.batch_images = Histogram(
            "imgpipe_inference_batch_images", "Images per onnxruntime call (micro-batching)",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r,
        )  # fmt: skip
        self.feature_log_dropped = Counter(
            "imgpipe_feature_log_dropped_images", "Images not logged (writer behind)", registry=r
        )
        for name in self.classes:  # every class shows up, with 0, from the start
            self.predictions.labels(predicted=name)

    def observe_predictions(self, probabilities: np.ndarray) -> None:
        for index, confidence in zip(
            probabilities.argmax(axis=1), probabilities.max(axis=1), strict=True
        ):
            self.predictions.labels(predicted=self.classes[index]).inc()
            self.confidence.observe(float(confidence))


class _Refused(HTTPException):
    """A request refused for a reason worth its own error counter."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(status, detail)
        self.reason = reason


class _BodyTooLarge(_Refused):
    def __init__(self, limit: int) -> None:
        super().__init__(
            413, "body_too_large", f"request body larger than the limit of {limit} bytes"
        )


class RequestGuard:
    """ASGI middleware: refuses bodies above the size limit (by Content-Length, and by counting
    for chunked uploads) and records every request's status and latency."""

    def __init__(self, app: AsgiApp, metrics: ServiceMetrics, max_body_bytes: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        limit = self.max_body_bytes

        async def send_recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        received = 0

        async def receive_counting() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        try:
            declared = dict(scope.get("headers", [])).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > limit:
                await JSONResponse({"detail": _BodyTooLarge(limit).detail}, 413)(
                    scope, receive, send_recording
                )
                self.metrics.errors.labels(reason="body_too_large").inc()
            else:
                await self.app(scope, receive_counting, send_recording)
        finally:
            if status >= 500:
                self.metrics.errors.labels(reason="internal").inc()
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(route=route, status=str(status)).inc()
            self.metrics.latency.labels(route=route).observe(time.perf_counter() - started)


# --- API ------------------------------------------------------------------------------------


class ClassProbability(BaseModel):
    class_name: str = Field(alias="class", description="class name, as in the training data")
    probability: float = Field(ge=0, le=1)


class ImagePrediction(BaseModel):
    file: str = Field(description="the uploaded file's name")
    top: list[ClassProbability] = Field(description="most probable classes first")


class PredictResponse(BaseModel):
    model_sha256: str
    predictions: list[ImagePrediction]


class ModelIdentity(BaseModel):
    path: str
    sha256: str = Field(description="sha256 of model.onnx")
    commit: str | None = Field(description="git commit the model was built from, if known")
    architecture: str
    classes: list[str]
    image_size: int
    channels: int
    checkpoint_sha256: str | None = None


class Health(BaseModel):
    status: str
    version: str
    model: ModelIdentity


class ErrorDetail(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what was wrong (a list of field errors for invalid parameters)"
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorDetail, "description": "body, image count or pixel count over a limit"},
    415: {"model": ErrorDetail, "description": "a file is not an image in an accepted format"},
    422: {"model": ErrorDetail, "description": "a file could not be decoded, or bad parameters"},
}


@dataclass
class _Service:
    """What the lifespan starts; the request handlers find it here."""

    batcher: MicroBatcher | None = None
    feature_log: FeatureLog | None = None


def create_app(config: ServeConfig) -> FastAPI:
    """The service for one model. Loading happens here, so a bad model fails at start-up."""
    classifier = OnnxClassifier(config.model, threads=config.threads, spin=False)
    meta = classifier.meta
    identity = ModelIdentity(
        path=str(config.model),
        sha256=file_sha256(config.model),
        commit=model_commit(config.model),
        architecture=str(meta.get("architecture", "unknown")),
        classes=classifier.classes,
        image_size=int(meta["image_size"]),
        channels=int(meta["channels"]),
        checkpoint_sha256=meta.get("checkpoint_sha256"),
    )
    metrics = ServiceMetrics(classifier.classes)
    service = _Service()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if config.feature_log is not None:
            service.feature_log = FeatureLog(
                config.feature_log, classifier.classes, max_bytes=config.feature_log_max_bytes,
                backups=config.feature_log_backups, on_drop=metrics.feature_log_dropped.inc,
            )  # fmt: skip
        batcher = MicroBatcher(
            lambda batch: classifier.run(batch, batch_size=len(batch)),
            config.max_batch, config.batch_window_ms / 1000,
            on_batch=metrics.batch_images.observe,
        )  # fmt: skip
        async with batcher:
            service.batcher = batcher
            log.info("serving %s (%s, %d classes)", config.model, identity.sha256[:12],
                     len(identity.classes))  # fmt: skip
            try:
                yield
            finally:
                if service.feature_log is not None:
                    service.feature_log.close()

    app = FastAPI(
        title="imgpipe",
        version=__version__,
        summary="Image classification with the pipeline's exported ONNX model",
        lifespan=lifespan,
    )
    app.add_middleware(RequestGuard, metrics=metrics, max_body_bytes=config.max_upload_bytes)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        reason = getattr(error, "reason", f"http_{error.status_code}")
        metrics.errors.labels(reason=reason).inc()
        return JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.errors.labels(reason="invalid_request").inc()
        return await request_validation_exception_handler(request, error)

    @app.post("/predict", response_model=PredictResponse, responses=ERROR_RESPONSES)
    async def predict(
        files: Annotated[
            list[UploadFile], File(min_length=1, description="one or more image files")
        ],
        top_k: Annotated[int, Query(ge=1, le=1000, description="classes per image")] = 3,
    ) -> PredictResponse:
        """Classify the uploaded images: the ``top_k`` most probable classes of each (all
        classes when ``top_k`` exceeds their number)."""
        if len(files) > config.max_images:
            raise _Refused(
                413, "too_many_images",
                f"{len(files)} images in one request; the limit is {config.max_images}",
            )  # fmt: skip
        names = [f.filename or f"file{i}" for i, f in enumerate(files)]
        contents = [await f.read() for f in files]
        images = await run_in_threadpool(_decode_all, names, contents, identity, config.max_pixels)
        assert service.batcher is not None  # set by the lifespan
        probabilities, embeddings = await service.batcher.predict(images)
        metrics.observe_predictions(probabilities)
        if service.feature_log is not None:
            context = {"time": time.time(), "request": uuid.uuid4().hex}
            service.feature_log.submit(context, images, (probabilities, embeddings))
        return PredictResponse(
            model_sha256=identity.sha256,
            predictions=[
                ImagePrediction(file=name, top=_top(row, classifier.classes, top_k))
                for name, row in zip(names, probabilities, strict=True)
            ],
        )

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness and the identity of the model being served."""
        return Health(status="ok", version=__version__, model=identity)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
    async def prometheus_metrics() -> Response:
        """Prometheus exposition: requests, latency, errors, predicted classes, confidence."""
        return Response(prometheus_text(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def upload_page() -> HTMLResponse:
        return HTMLResponse(_PAGE)

    return app


def _decode_all(
    names: list[str], contents: list[bytes], identity: ModelIdentity, max_pixels: int
) -> np.ndarray:
    decoded = []
    for name, data in zip(names, contents, strict=True):
        try:
            pixels = decode_image(
                data, identity.image_size, identity.channels,
                max_pixels=max_pixels, formats=ACCEPTED_FORMATS,
            )  # fmt: skip
        except ImageTooLargeError as error:
            raise _Refused(413, "image_too_large", f"{name}: {error}") from None
        except NotAnImageError as error:
            raise _Refused(415, "not_an_image", f"{name}: {error}") from None
        except ImageDecodeError as error:
            raise _Refused(422, "undecodable_image", f"{name}: {error}") from None
        decoded.append(pixels)
    return np.stack(decoded)


def _top(probabilities: np.ndarray, classes: list[str], k: int) -> list[ClassProbability]:
    order = np.argsort(-probabilities, kind="stable")[:k]
    return [
        ClassProbability.model_validate(
            {"class": classes[i], "probability": float(probabilities[i])}
        )
        for i in order
    ]


_PAGE = resources.files("imgpipe").joinpath("static/index.html").read_text(encoding="utf-8")
