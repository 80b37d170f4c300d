"""``siamindex serve``'s HTTP API (FastAPI): the served indexes as JSON routes, a page to draw a
digit, health, readiness and Prometheus metrics.

Every answer is one envelope: ``{"result": ..., "time": seconds}``, or ``{"error": "one line"}``
with a 4xx status for bad input (never a 5xx). Results carry the same fields as the CLI's JSON,
from the same library types (``siamindex.query.to_json``). What is kept warm, and swapped when
an index changes, is ``siamindex.service``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib import resources
from typing import Any, Literal

import numpy as np
from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException

from siamindex import curation
from siamindex.errors import (
    SiamIndexError,
)
from siamindex.query import Relabelled, Removed, membership_summary, to_json
from siamindex.service import IndexHolder, Limits, Served, decode_upload, index_key

logger = logging.getLogger(__name__)
Prepare = Literal["auto", "mnist", "none"]


@dataclass(frozen=True)
class ServeConfig:
    """How ``serve`` runs.

    Attributes:
        indexes: index names or paths to serve (each under its last path part).
        token: the bearer token; writes need it, and every route but the probes when
            ``token_for_reads`` (set when bound beyond loopback). None: writes are refused.
        token_for_reads: every route needs the token.
        limits: what one request may carry.
        max_batch, max_wait: the micro-batcher's bounds (images, seconds).
        poll_seconds: how often the index names are checked for a new bundle.
        compiled: run the encoder compiled by XLA, every batch shape compiled at load.
    """

    indexes: tuple[str, ...]
    token: str | None = None
    token_for_reads: bool = False
    limits: Limits = field(default_factory=Limits)
    max_batch: int = 256
    max_wait: float = 0.002
    poll_seconds: float = 0.5
    compiled: bool = True


# -- request bodies (the OpenAPI schema comes from these) ----------------------------------


class Image(BaseModel):
    """One image: exactly one of png (base64 PNG or JPEG bytes), npy (base64 .npy bytes),
    pixels (28 rows of 28 values 0-255) or ref (a dataset item such as mnist:test:0)."""

    model_config = ConfigDict(extra="forbid")
    png: str | None = None
    npy: str | None = None
    pixels: list[list[float]] | None = None
    ref: str | None = None


class QueryBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    images: list[Image] = Field(min_length=1)
    k: int = Field(5, ge=1)
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    prepare: Prepare = "auto"


class Claim(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    image: Image
    class_name: str = Field(alias="class", min_length=1)
    true_class: str | None = None


class CheckBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    claims: list[Claim] = Field(min_length=1)
    per_class: bool = False
    nprobe: int | None = Field(None, ge=1)
    ef_search: int | None = Field(None, ge=1)
    prepare: Prepare = "auto"


class CompareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    first: Image
    second: Image
    prepare: Prepare = "auto"


class AddBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    images: list[Image] = Field(min_length=1)
    class_name: str = Field(alias="class", min_length=1)
    new_class: bool = False
    prepare: Prepare = "auto"


class PrepareBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: Image
    prepare: Prepare = "auto"


class RemoveBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ids: list[int] = Field(min_length=1)


class RelabelBody(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    ids: list[int] = Field(min_length=1)
    class_name: str = Field(alias="class", min_length=1)


# -- the envelope and errors ---------------------------------------------------------------


class ApiError(Exception):
    """A one-line error with its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def envelope(result: Any, started: float) -> Response:
    body = json.dumps({"result": result, "time": round(time.perf_counter() - started, 6)})
    return Response(body, media_type="application/json")


def error_response(status: int, message: str) -> Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    line = " ".join(str(message).split())[:500]
    return Response(json.dumps({"error": line}), status, headers, "application/json")


# -- the app --------------------------------------------------------------------------------

SERVE_CONFIG_ENV = "SIAMINDEX_SERVE_CONFIG"  # ServeConfig as JSON, for serve --workers


def app_from_environment() -> FastAPI:
    """The app of one ``serve --workers N`` process, from the config the command left in the
    environment (each worker imports this, as uvicorn's factory)."""
    given = json.loads(os.environ[SERVE_CONFIG_ENV])
    limits = Limits(**given.pop("limits"))
    return create_app(
        ServeConfig(**{**given, "indexes": tuple(given["indexes"]), "limits": limits})
    )


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``config.indexes`` (opened and warmed in the lifespan hook)."""
    from siamindex import api_support

    holders = {
        index_key(name): IndexHolder(name, config.max_batch, config.max_wait, config.compiled)
        for name in config.indexes
    }
    metrics = api_support.Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        for holder in holders.values():
            served = await holder.load()
            served.batcher.on_batch = metrics.batch
        metrics.served(holders)
        watchers = [
            asyncio.create_task(holder.watch(config.poll_seconds, lambda: metrics.served(holders)))
            for holder in holders.values()
        ]
        yield
        for task in watchers:
            task.cancel()
        for holder in holders.values():
            if holder.current is not None:
                await holder.current.batcher.close()

    app = FastAPI(
        title="siamindex",
        summary="Similarity search and class-membership checks over a Siamese-network index.",
        version=api_support.version(),
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.holders = holders
    app.state.config = config
    api_support.install(app, config, metrics, holders)

    def served(name: str) -> Served:
        holder = holders.get(name)
        if holder is None or holder.current is None:
            known = ", ".join(sorted(holders)) or "none"
            raise ApiError(404, f"No index '{name}' is served here; served: {known}.")
        current = holder.current
        if current.batcher.on_batch is None:
            current.batcher.on_batch = metrics.batch
        return current

    def authorize(request: Request, write: bool) -> None:
        if not (write or config.token_for_reads):
            return
        if config.token is None:
            raise ApiError(
                403, "Writes are disabled on this server; start it with --token-file to allow them."
            )
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "This route needs 'Authorization: Bearer TOKEN'.")
        if not hmac.compare_digest(given.strip().encode(), config.token.encode()):
            raise ApiError(403, "The bearer token is not this server's; check --token-file.")

    async def images_of(specs: list[Image], prepare: str, what: str = "images") -> np.ndarray:
        if len(specs) > config.limits.max_images:
            raise ApiError(
                413,
                f"{len(specs)} {what} in one request; at most {config.limits.max_images}. "
                "Split the request.",
            )
        dumped = [s.model_dump() for s in specs]
        if api_support.small(dumped):  # a thread hop costs more than decoding a digit or two
            return api_support.decode_all(dumped, prepare, config.limits, what)
        return await asyncio.to_thread(api_support.decode_all, dumped, prepare, config.limits, what)

    @app.get("/healthz")
    async def healthz() -> Response:
        return envelope({"status": "alive", "pid": os.getpid()}, time.perf_counter())

    @app.get("/readyz")
    async def readyz() -> Response:
        started = time.perf_counter()
        waiting = [name for name, holder in holders.items() if not holder.ready]
        if waiting:
            return error_response(503, f"Not ready: warming {', '.join(waiting)}.")
        generations = {n: h.current.generation for n, h in holders.items() if h.current}
        return envelope({"ready": True, "generations": generations}, started)

    @app.get("/v1/indexes")
    async def list_indexes(request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=False)
        return envelope([api_support.info(served(name)) for name in sorted(holders)], started)

    @app.get("/v1/indexes/{name}")
    async def info(name: str, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=False)
        return envelope(api_support.info(served(name)), started)

    @app.post("/v1/indexes/{name}/query")
    async def query(name: str, body: QueryBody, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=False)
        current = served(name)
        current.index.check_k(body.k)  # before any work
        pixels = await images_of(body.images, body.prepare)
        batcher = current.query_batcher(body.k, body.nprobe, body.ef_search)
        results = await batcher.submit(pixels)
        names = [f"images[{i}]" for i in range(len(pixels))]
        return envelope(to_json([r.named(n) for r, n in zip(results, names, strict=True)]), started)

    @app.post("/v1/indexes/{name}/query/files")
    async def query_files(
        name: str,
        request: Request,
        images: list[UploadFile] = File(..., description="PNG, JPEG or .npy files"),  # noqa: B008
        k: int = Form(5, ge=1),  # noqa: B008
        prepare: Prepare = Form("auto"),  # noqa: B008
    ) -> Response:
        """``query`` with images uploaded as multipart files (named by their file names)."""
        started = time.perf_counter()
        authorize(request, write=False)
        current = served(name)
        if len(images) > config.limits.max_images:
            raise ApiError(413, f"{len(images)} files; at most {config.limits.max_images}.")
        current.index.check_k(k)
        raws = [await upload.read() for upload in images]
        names = [upload.filename or f"images[{i}]" for i, upload in enumerate(images)]
        pixels = await asyncio.to_thread(
            lambda: np.stack(
                [
                    decode_upload(raw, n, prepare, config.limits)
                    for raw, n in zip(raws, names, strict=True)
                ]
            )
        )
        results = await current.query_batcher(k, None, None).submit(pixels)
        return envelope(to_json([r.named(n) for r, n in zip(results, names, strict=True)]), started)

    @app.post("/v1/indexes/{name}/check")
    async def check(name: str, body: CheckBody, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=False)
        current = served(name)
        claims = body.claims
        classes = [c.class_name for c in claims]
        truth = [c.true_class for c in claims]
        current.index.class_positions(classes, truth)  # unknown classes: before decoding
        current.index.check_search(body.nprobe, body.ef_search)
        pixels = await images_of([c.image for c in claims], body.prepare, "claims")
        vectors = await current.batcher.submit(pixels)
        results = await asyncio.to_thread(
            current.index.check_vectors,
            vectors,
            classes,
            body.per_class,
            [f"claims[{i}]" for i in range(len(claims))],
            truth if any(t is not None for t in truth) else None,
            body.nprobe,
            body.ef_search,
        )
        summary = membership_summary(results)
        return envelope({"results": to_json(results), "summary": summary}, started)

    @app.post("/v1/indexes/{name}/compare")
    async def compare(name: str, body: CompareBody, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=False)
        current = served(name)
        pixels = await images_of([body.first, body.second], body.prepare)
        vectors = await current.batcher.submit(pixels)
        from siamindex.query import compare as compare_vectors

        threshold = current.index.facts.pair_threshold
        result = compare_vectors(vectors[0], vectors[1], ("first", "second"), threshold)
        return envelope(to_json(result), started)

    @app.post("/v1/indexes/{name}/add")
    async def add(name: str, body: AddBody, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=True)
        holder, current = holders.get(name), served(name)
        pixels = await images_of(body.images, body.prepare)
        writer = api_support.writer(current)
        ids = await asyncio.to_thread(writer.add, pixels, body.class_name, body.new_class)
        if holder is not None:
            await holder.refresh()
        added = curation.added(writer.store, str(writer.path), body.class_name, ids)
        return envelope(to_json(added), started)

    @app.post("/v1/indexes/{name}/remove")
    async def remove(name: str, body: RemoveBody, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=True)
        holder, current = holders.get(name), served(name)
        writer = api_support.writer(current)
        wanted = sorted(set(body.ids))
        await asyncio.to_thread(writer.remove, wanted)
        if holder is not None:
            await holder.refresh()
        return envelope(to_json(Removed(str(writer.path), wanted, len(writer.store.rows))), started)

    @app.post("/v1/indexes/{name}/relabel")
    async def relabel(name: str, body: RelabelBody, request: Request) -> Response:
        started = time.perf_counter()
        authorize(request, write=True)
        holder, current = holders.get(name), served(name)
        writer = api_support.writer(current)
        wanted = sorted(set(body.ids))
        await asyncio.to_thread(writer.relabel, wanted, body.class_name)
        if holder is not None:
            await holder.refresh()
        done = Relabelled(str(writer.path), body.class_name, wanted, len(writer.store.rows))
        return envelope(to_json(done), started)

    @app.get("/v1/indexes/{name}/audit")
    async def audit(
        name: str,
        request: Request,
        k: int = Query(10, ge=1, le=1000),
        top: int = Query(20, ge=1, le=10_000),
    ) -> Response:
        """Stored images whose label their k nearest stored images disagree with."""
        started = time.perf_counter()
        authorize(request, write=False)
        index = served(name).index
        found = await asyncio.to_thread(index.audit, k)
        report = curation.Audit(str(index.path), k, len(index.store.rows), len(found), found[:top])
        return envelope(to_json(report), started)

    @app.post("/v1/prepare")
    async def prepare(body: PrepareBody, request: Request) -> Response:
        """The 28x28 input an IMAGE becomes (what the encoder sees)."""
        started = time.perf_counter()
        authorize(request, write=False)
        pixels = await images_of([body.image], body.prepare, "image")
        return envelope({"pixels": pixels[0].tolist()}, started)

    @app.get("/v1/indexes/{name}/images/{row_id}.png")
    async def stored_image(name: str, row_id: int, request: Request) -> Response:
        authorize(request, write=False)
        current = served(name)
        png = await asyncio.to_thread(api_support.stored_png, current, row_id)
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})

    @app.get("/", response_class=HTMLResponse)
    async def page(request: Request) -> Response:
        authorize(request, write=False)
        text = resources.files("siamindex").joinpath("static/page.html").read_text()
        return HTMLResponse(text.replace("{{INDEXES}}", json.dumps(sorted(holders))))

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, exc: ApiError) -> Response:
        return error_response(exc.status, exc.message)

    @app.exception_handler(SiamIndexError)
    async def on_library_error(request: Request, exc: SiamIndexError) -> Response:
        return error_response(api_support.status_of(exc), str(exc))

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        return error_response(*api_support.validation_message(exc))

    @app.exception_handler(HTTPException)
    async def on_http(request: Request, exc: HTTPException) -> Response:
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404:
            return error_response(404, f"No route {where}; see /docs for the routes.")
        if exc.status_code == 405:
            return error_response(405, f"{where} is not allowed; see /docs for the methods.")
        return error_response(exc.status_code, str(exc.detail))

    return app
