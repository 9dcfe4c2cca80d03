"""The FastAPI application: a page for people, a JSON API for programs, both hardened against bad input.

Routes (docs/serving.md; OpenAPI at ``/docs``): ``GET /`` the self-contained page, ``GET /health``,
``GET /v1/model`` and ``POST /v1/predict`` (one or more ``file`` fields, optional ``top_k``). Every error is JSON
``{"detail": "..."}`` naming the problem, 4xx for what the client can fix (413 for an oversized body, refused as it
streams in; 400 for a bad image, refused before decoding where it declares too many pixels), 401 without the API
key, 503 with Retry-After when the queue is full. No request names a file on the server.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from typing import Annotated

import anyio
import numpy as np
from fastapi import Depends, FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cifarkit import __version__
from cifarkit.analysis import ranked
from cifarkit.data.images import image_to_array
from cifarkit.errors import CifarkitError
from cifarkit.serve.backends import Classifier
from cifarkit.serve.batching import DynamicBatcher, QueueFull
from cifarkit.serve.security import PAGE_HEADERS, api_key_dependency
from cifarkit.serve.settings import ServeSettings

log = logging.getLogger("cifarkit.serve")

RETRY_AFTER_S = 1


class ClassProbability(BaseModel):
    class_name: str = Field(alias="class", description="class name")
    probability: float


class ImageResult(BaseModel):
    image: str = Field(description="the uploaded file's name, as the client sent it")
    predictions: list[ClassProbability] = Field(description="the top_k classes, most probable first")


class ModelIdentity(BaseModel):
    run: str
    recipe: str
    cifarkit_version: str


class PredictResponse(BaseModel):
    model: ModelIdentity
    results: list[ImageResult]


class Limits(BaseModel):
    max_upload_bytes: int
    max_files: int
    max_pixels: int


class ModelInfo(ModelIdentity):
    classes: list[str]
    input_size: list[int] = Field(description="height and width every image is cropped and resized to")
    parameters: int | None
    test_acc: float | None = Field(description="test accuracy from the run's metrics, without TTA")
    test_acc_tta: float | None = Field(description="test accuracy with the run's TTA, when evaluated with one")
    tta: str = Field(description="test-time augmentation the server applies")
    backend: str
    precision: str
    device: str
    limits: Limits


def create_app(classifier: Classifier, settings: ServeSettings | None = None) -> FastAPI:
    """The web application serving ``classifier`` within ``settings``' limits (default :class:`ServeSettings`)."""
    settings = settings or ServeSettings()
    batcher = DynamicBatcher(
        classifier.predict,
        max_batch=settings.max_batch,
        max_wait=settings.batch_wait_ms / 1000,
        max_queue=settings.max_queue,
    )
    page = resources.files("cifarkit.serve").joinpath("page.html").read_text(encoding="utf-8")
    model_info = ModelInfo(
        **classifier.info,
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes, max_files=settings.max_files, max_pixels=settings.max_pixels
        ),
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # A first forward pass sets up the kernels (oneDNN, onnxruntime): not on the first client's time.
        await anyio.to_thread.run_sync(classifier.predict, np.zeros((1, 32, 32, 3), np.uint8))
        async with batcher.running():
            yield

    app = FastAPI(
        title="cifarkit",
        version=__version__,
        lifespan=lifespan,
        description=f"CIFAR-10 classifier: run {classifier.info['run']} ({classifier.info['recipe']})",
    )
    app.state.batcher = batcher
    app.add_middleware(DeclaredSizeLimit, max_bytes=settings.max_upload_bytes, message=_too_large(settings))
    app.add_middleware(RequestLog)
    _add_error_handlers(app, settings)
    authorized = [Depends(api_key_dependency(settings.api_key))]

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page, headers=PAGE_HEADERS)

    @app.get("/health", summary="Liveness")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/model", dependencies=authorized, summary="The model being served")
    async def model() -> ModelInfo:
        return model_info

    _add_predict(app, classifier, batcher, settings, authorized)
    return app


def _add_predict(
    app: FastAPI, classifier: Classifier, batcher: DynamicBatcher, settings: ServeSettings, authorized: list
) -> None:
    """``POST /v1/predict``: decode the uploads on a few threads, batch them with others, answer the top classes."""
    decoders = anyio.CapacityLimiter(os.cpu_count() or 1)  # decoding is CPU work: no more threads than cores
    identity = ModelIdentity(**classifier.identity)

    @app.post(
        "/v1/predict",
        dependencies=authorized,
        summary="Classify images",
        max_body_size=settings.max_upload_bytes,
        form_limits={"max_files": settings.max_files, "max_fields": 8},
        responses={
            400: {"description": "a file is empty, truncated, not an image or has too many pixels"},
            413: {"description": "the request body is larger than the limit"},
            503: {"description": "the model's queue is full; retry after the Retry-After seconds"},
        },
    )
    async def predict(
        file: Annotated[list[UploadFile], File(description="image files (PNG, JPEG, any Pillow format and size)")],
        top_k: Annotated[int, Form(ge=1, description="classes to return per image")] = 3,
    ) -> PredictResponse:
        if top_k > len(classifier.classes):
            raise HTTPException(422, f"top_k must be between 1 and {len(classifier.classes)}, got {top_k}")
        with batcher.arriving():  # an idle model waits briefly for this request to batch it with others
            uploads = [(upload.filename or f"file {i}", await upload.read()) for i, upload in enumerate(file, 1)]
            images = await anyio.to_thread.run_sync(_decode_all, uploads, settings.max_pixels, limiter=decoders)
        try:
            probs = await batcher.submit(images)
        except QueueFull as e:
            raise HTTPException(
                503,
                f"the server is busy ({e}); retry in {RETRY_AFTER_S} s",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
        if not np.isfinite(probs).all():  # the model's fault, not the client's; JSON could not carry NaN anyway
            log.error("the model's probabilities are not finite for %s", [name for name, _ in uploads])
            raise HTTPException(500, "the model's output is not finite for these images; the server log names them")
        return PredictResponse(
            model=identity,
            results=[
                ImageResult(image=name, predictions=_top(p, classifier.classes, top_k))
                for (name, _), p in zip(uploads, probs)
            ],
        )


def _decode_all(uploads: list[tuple[str, bytes]], max_pixels: int) -> np.ndarray:
    """uint8 (N, 32, 32, 3) arrays of the uploads, or a 400 naming the first file that is not a usable image."""
    arrays = []
    for name, data in uploads:
        if not data:
            raise HTTPException(400, f"{name} is empty: send the image's bytes in the 'file' field")
        try:
            arrays.append(image_to_array(data, max_pixels=max_pixels))
        except CifarkitError as e:
            raise HTTPException(400, f"{name}: {e}") from None
    return np.stack(arrays)


def _top(probs: np.ndarray, classes: list[str], k: int) -> list[ClassProbability]:
    """The ``k`` most probable classes of one probability row, ranked as `cifarkit predict` ranks them."""
    return [ClassProbability(**{"class": name, "probability": p}) for name, p in ranked(probs, classes, k)]


def _add_error_handlers(app: FastAPI, settings: ServeSettings) -> None:
    """Every error as JSON ``{"detail": message}``: the message names the problem, never a traceback."""

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 413 and detail == "Content Too Large":  # FastAPI's body limit, in our words
            detail = _too_large(settings)
        return JSONResponse({"detail": detail}, exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc'][1:]) or 'request'}: {error['msg']}" for error in exc.errors()
        )
        hint = "send a multipart form with one or more 'file' fields and optionally 'top_k' (see /docs)"
        return JSONResponse({"detail": f"invalid request ({problems}); {hint}"}, 422)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("error in %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal error; the server log has the details"}, 500)


def _too_large(settings: ServeSettings) -> str:
    return (
        f"the request body is larger than the limit of {settings.max_upload_mb:g} MB: "
        "send smaller images or fewer per request"
    )


class DeclaredSizeLimit:
    """Answers 413 at once, reading nothing, to a request whose Content-Length exceeds the limit (ASGI middleware).

    A chunked body is counted as it streams in, by the route's ``max_body_size``.
    """

    def __init__(self, app: ASGIApp, max_bytes: int, message: str) -> None:
        self.app, self.max_bytes, self.message = app, max_bytes, message

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = Headers(scope=scope).get("content-length", "") if scope["type"] == "http" else ""
        if length.isdigit() and int(length) > self.max_bytes:
            await JSONResponse({"detail": self.message}, 413)(scope, receive, send)
            return
        await self.app(scope, receive, send)


class RequestLog:
    """Logs one line per request: method, path, status and latency (ASGI middleware)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start, status = time.perf_counter(), 500

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log.info("%s %s %d %.1f ms", scope["method"], scope["path"], status, (time.perf_counter() - start) * 1e3)
