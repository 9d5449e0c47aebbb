"""The FastAPI app: ``POST /predict``, ``GET /health``, ``/metrics``, ``/`` and the schema.

Everything the service knows about the model comes from ``model.onnx`` itself (classes, input
size, channels, the operating point its decisions follow; normalisation is inside the graph),
and uploads are decoded by
:class:`~imgpipe.runtime.classify.DecodePolicy`, the decoding preprocess used for the training data
under the limits ``imgpipe predict`` applies too.

Concurrency: uploads are decoded in worker threads; inference runs on one dedicated thread fed by
a :class:`~imgpipe.serving.batching.MicroBatcher`, which joins the images of concurrent requests
into one onnxruntime call (waiting at most a short window for company), so the event loop never
blocks on the model and throughput under load approaches onnxruntime's batch throughput.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, Query, Request, UploadFile
from fastapi.exception_handlers import request_validation_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client import generate_latest as prometheus_text
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from imgpipe import __version__
from imgpipe.data.images import ImageDecodeError, ImageTooLargeError, NotAnImageError
from imgpipe.io import file_sha256
from imgpipe.runtime.classify import (
    CLASSES_REPORTED,
    Decision,
    DecodePolicy,
    decisions_per_image,
    top_classes,
)
from imgpipe.runtime.onnx_model import OnnxClassifier, OperatingPoint
from imgpipe.serving.baseline import load_baseline
from imgpipe.serving.batching import MicroBatcher
from imgpipe.serving.feature_log import FeatureLog
from imgpipe.serving.guard import Refused, RequestGuard
from imgpipe.serving.metrics import ServiceMetrics
from imgpipe.serving.provenance import model_commit
from imgpipe.serving.settings import ServeConfig

log = logging.getLogger(__name__)


class ClassProbability(BaseModel):
    class_name: str = Field(alias="class", description="class name, as in the training data")
    probability: float = Field(ge=0, le=1)


class ServedOperatingPoint(BaseModel):
    """The decision rule: positive when the probability of ``positive_class`` is at least
    ``threshold`` (the model's, chosen on the validation split, or ``imgpipe serve
    --threshold``)."""

    positive_class: str
    threshold: float = Field(ge=0, le=1)


class ImagePrediction(BaseModel):
    file: str = Field(description="the uploaded file's name")
    top: list[ClassProbability] = Field(description="most probable classes first")
    decision: Decision | None = Field(
        default=None, description="at the operating point; null when the model has none"
    )
    positive_probability: float | None = Field(
        default=None, ge=0, le=1, description="probability of the positive class, or null"
    )


class PredictResponse(BaseModel):
    model_sha256: str
    operating_point: ServedOperatingPoint | None = Field(
        default=None, description="the rule behind each decision; null when the model has none"
    )
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
    operating_point: ServedOperatingPoint | None = None


class Health(BaseModel):
    status: str
    version: str
    model: ModelIdentity


class ErrorDetail(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="what was wrong (a list of field errors for invalid parameters)"
    )


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorDetail, "description": "the multipart body could not be parsed"},
    413: {"model": ErrorDetail, "description": "body, image count or pixel count over a limit"},
    415: {"model": ErrorDetail, "description": "a file is not an image in an accepted format"},
    422: {"model": ErrorDetail, "description": "a file could not be decoded, or bad parameters"},
}


UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorDetail, "description": "missing or wrong bearer token"}
}


def token_check(token: str | None) -> Callable[..., Awaitable[None]]:
    """A dependency refusing requests without ``Authorization: Bearer <token>`` (compared in
    constant time); with no token configured it lets everything through. It also puts the
    bearer scheme in the OpenAPI schema."""
    bearer = HTTPBearer(auto_error=False, description="set with --token-file or IMGPIPE_TOKEN")

    # A default, not Annotated[...]: FastAPI resolves string annotations in module scope,
    # where this function's `bearer` does not exist.
    async def check(
        credentials: HTTPAuthorizationCredentials | None = Depends(bearer),  # noqa: B008
    ) -> None:
        if token is None:
            return
        given = credentials.credentials if credentials is not None else ""
        if not secrets.compare_digest(given.encode(), token.encode()):
            raise Refused(
                401,
                "unauthorized",
                "missing or wrong bearer token",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return check


def create_app(config: ServeConfig) -> FastAPI:
    """The service for one model. Loading happens here, so a bad model fails at start-up."""
    classifier = OnnxClassifier(
        config.model, threads=config.threads, spin=False, threshold=config.threshold
    )
    identity = _model_identity(config, classifier)
    metrics = ServiceMetrics(classifier.classes)
    metrics.describe_model(identity.sha256, identity.architecture, identity.commit)
    if config.baseline is not None:
        metrics.export_baseline(load_baseline(config.baseline, classifier.classes))
    # /docs and /redoc load their scripts from this service, not a CDN: they work where nothing
    # may call out, and no third-party script runs beside uploads and the service's token.
    app = FastAPIOffline(
        static_url="/docs-assets",
        title="imgpipe",
        version=__version__,
        summary="Image classification with the pipeline's exported ONNX model",
        lifespan=_lifespan(config, classifier, metrics, identity),
    )
    app.add_middleware(RequestGuard, metrics=metrics, max_body_bytes=config.max_upload_bytes)
    _add_error_handlers(app, metrics)
    # One dependency for every guarded route (and one bearer scheme in the OpenAPI schema).
    authorised = [Depends(token_check(config.token))] if config.token else []
    _add_predict(
        app,
        config=config,
        classifier=classifier,
        metrics=metrics,
        identity=identity,
        authorised=authorised,
    )
    metrics_guard = authorised if config.token_for_metrics else []
    _add_status_pages(app, metrics, identity, metrics_guard)
    return app


def _model_identity(config: ServeConfig, classifier: OnnxClassifier) -> ModelIdentity:
    return ModelIdentity(
        path=str(config.model),
        sha256=file_sha256(config.model),
        commit=model_commit(config.model),
        architecture=str(classifier.meta.get("architecture", "unknown")),
        classes=classifier.classes,
        image_size=classifier.image_size,
        channels=classifier.channels,
        checkpoint_sha256=classifier.meta.get("checkpoint_sha256"),
        operating_point=_served_point(classifier.operating_point),
    )


def _served_point(point: OperatingPoint | None) -> ServedOperatingPoint | None:
    if point is None:
        return None
    return ServedOperatingPoint(positive_class=point.positive_class, threshold=point.threshold)


def _lifespan(
    config: ServeConfig,
    classifier: OnnxClassifier,
    metrics: ServiceMetrics,
    identity: ModelIdentity,
) -> Callable[[FastAPI], AbstractAsyncContextManager[dict[str, Any]]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        """Starts the inference thread and the feature-log writer; the handlers find them in
        ``request.state``."""
        feature_log = None
        if config.feature_log is not None:
            feature_log = FeatureLog(
                config.feature_log,
                classifier.classes,
                max_bytes=config.feature_log_max_bytes,
                backups=config.feature_log_backups,
                on_drop=metrics.feature_log_dropped.inc,
            )
        batcher = MicroBatcher(
            lambda batch: classifier.run(batch, batch_size=len(batch)),
            config.max_batch,
            config.batch_window_ms / 1000,
            on_batch=metrics.batch_images.observe,
        )
        async with batcher:
            log.info(
                "serving %s (%s, %d classes; drift baseline for the alerts: %s)",
                config.model,
                identity.sha256[:12],
                len(identity.classes),
                config.baseline or "none, pass --baseline",
            )
            try:
                yield {"batcher": batcher, "feature_log": feature_log}
            finally:
                if feature_log is not None:
                    feature_log.close()

    return lifespan


def _add_error_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Errors answered as JSON ``{"detail": ...}`` and counted by reason."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        reason = getattr(error, "reason", f"http_{error.status_code}")
        metrics.errors.labels(reason=reason).inc()
        return JSONResponse({"detail": error.detail}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics.errors.labels(reason="invalid_request").inc()
        return await request_validation_exception_handler(request, error)


def _add_predict(
    app: FastAPI,
    *,
    config: ServeConfig,
    classifier: OnnxClassifier,
    metrics: ServiceMetrics,
    identity: ModelIdentity,
    authorised: list[Any],
) -> None:
    """``POST /predict``, behind ``authorised`` (the bearer token when one is configured)."""
    policy = DecodePolicy(max_pixels=config.max_pixels)

    @app.post(
        "/predict",
        response_model=PredictResponse,
        dependencies=authorised,
        responses=ERROR_RESPONSES | (UNAUTHORIZED if authorised else {}),
    )
    async def predict(
        request: Request,
        response: Response,
        files: Annotated[
            list[UploadFile], File(min_length=1, description="one or more image files")
        ],
        top_k: Annotated[
            int, Query(ge=1, le=1000, description="classes per image")
        ] = CLASSES_REPORTED,
    ) -> PredictResponse:
        """Classify the uploaded images: the ``top_k`` most probable classes of each (all
        classes when ``top_k`` exceeds their number) and, when the model has an operating
        point, its decision. The ``Server-Timing`` header says how long the service took
        (``predict;dur=<ms>``)."""
        started = time.perf_counter()
        if len(files) > config.max_images:
            raise Refused(
                413,
                "too_many_images",
                f"{len(files)} images in one request; the limit is {config.max_images}",
            )
        names = [f.filename or f"file{i}" for i, f in enumerate(files)]
        contents = [await f.read() for f in files]
        images = await run_in_threadpool(_decode_all, names, contents, policy, classifier)
        probabilities, embeddings = await request.state.batcher.predict(images)
        metrics.observe_predictions(probabilities)
        if request.state.feature_log is not None:
            context = {"time": time.time(), "request": uuid.uuid4().hex}
            request.state.feature_log.submit(context, images, (probabilities, embeddings))
        response.headers["Server-Timing"] = (
            f"predict;dur={1000 * (time.perf_counter() - started):.1f}"
        )
        return PredictResponse(
            model_sha256=identity.sha256,
            operating_point=identity.operating_point,
            predictions=_image_predictions(names, probabilities, classifier, top_k),
        )


def _add_status_pages(
    app: FastAPI, metrics: ServiceMetrics, identity: ModelIdentity, metrics_guard: list[Any]
) -> None:
    """``GET /health``, ``/metrics`` (behind ``metrics_guard``) and the upload page ``/``."""

    @app.get("/health", response_model=Health)
    async def health() -> Health:
        """Liveness and the identity of the model being served."""
        return Health(status="ok", version=__version__, model=identity)

    @app.get(
        "/metrics",
        response_class=Response,
        dependencies=metrics_guard,
        responses={200: {"content": {"text/plain": {}}}, **(UNAUTHORIZED if metrics_guard else {})},
    )
    async def prometheus_metrics() -> Response:
        """Prometheus exposition: requests, latency, errors, predicted classes, confidence,
        the model's identity and the drift baseline's confidence and class mix."""
        return Response(prometheus_text(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def upload_page() -> HTMLResponse:
        return HTMLResponse(_PAGE)


def _decode_all(
    names: list[str], contents: list[bytes], policy: DecodePolicy, classifier: OnnxClassifier
) -> np.ndarray:
    """Every upload decoded, or the request refused naming the first file that was wrong."""
    decoded = []
    for name, data in zip(names, contents, strict=True):
        try:
            decoded.append(policy.decode(data, classifier))
        except ImageTooLargeError as error:
            raise Refused(413, "image_too_large", f"{name}: {error}") from None
        except NotAnImageError as error:
            raise Refused(415, "not_an_image", f"{name}: {error}") from None
        except ImageDecodeError as error:
            raise Refused(422, "undecodable_image", f"{name}: {error}") from None
    return np.stack(decoded)


def _image_predictions(
    names: list[str], probabilities: np.ndarray, classifier: OnnxClassifier, top_k: int
) -> list[ImagePrediction]:
    """Each upload's top classes and, at the operating point, its decision."""
    screened = decisions_per_image(classifier, probabilities)
    return [
        ImagePrediction(
            file=name,
            top=_top(row, classifier.classes, top_k),
            decision=decision,
            positive_probability=positive_probability,
        )
        for name, row, (positive_probability, decision) in zip(
            names, probabilities, screened, strict=True
        )
    ]


def _top(probabilities: np.ndarray, classes: list[str], k: int) -> list[ClassProbability]:
    return [
        ClassProbability.model_validate({"class": name, "probability": probability})
        for name, probability in top_classes(probabilities, classes, k)
    ]


_PAGE = resources.files("imgpipe").joinpath("static/index.html").read_text(encoding="utf-8")
