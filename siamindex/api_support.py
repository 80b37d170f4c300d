"""The service's plumbing beside its routes (``siamindex.api``): Prometheus metrics, the body-size
limit, offline API docs, and the helpers the routes share (decoding request images in bulk,
stored images as PNG, info)."""

from __future__ import annotations

import io
import json
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import numpy as np
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response

from siamindex.errors import (
    BadSearchSetting,
    DataError,
    IndexLocked,
    IndexNotFound,
    ItemNotFound,
    SiamIndexError,
)
from siamindex.index import Index
from siamindex.service import (
    DATASET_REF,
    IndexHolder,
    Limits,
    Served,
    decode_request_image,
    image_kinds,
)

MULTIPROCESS_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's, read when it is imported
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def version() -> str:
    from siamindex.version import __version__

    return str(__version__)


class Metrics:
    """Prometheus counters and histograms in a registry of their own (one per app). Under
    ``serve --workers N`` (``PROMETHEUS_MULTIPROC_DIR`` set) every worker writes its values to
    that folder and /metrics adds up all workers' (prometheus_client's multiprocess mode)."""

    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.multiprocess = bool(os.environ.get(MULTIPROCESS_ENV))
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "siamindex_requests",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "siamindex_request_seconds",
            "Time to answer a request, by route.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )
        self.batch_sizes = Histogram(
            "siamindex_batch_images",
            "Images per encoder call of the micro-batcher.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024, 4096, 16384),
            registry=self.registry,
        )
        self.generation = Gauge(
            "siamindex_index_generation",
            "Generation of each served index (1 at start, +1 per bundle swapped in).",
            ["index"],
            registry=self.registry,
            multiprocess_mode="livemax",  # workers swap one after another: the newest
        )
        self.count = Gauge(
            "siamindex_index_images", "Images stored in each served index.", ["index"],
            registry=self.registry, multiprocess_mode="livemostrecent",
        )  # fmt: skip

    def batch(self, size: int) -> None:
        self.batch_sizes.observe(size)

    def served(self, holders: dict[str, IndexHolder]) -> None:
        """Note the generation and size of what this process serves."""
        for name, holder in holders.items():
            if holder.current is not None:
                self.generation.labels(name).set(holder.current.generation)
                self.count.labels(name).set(len(holder.current.index.store.rows))

    def render(self, holders: dict[str, IndexHolder]) -> bytes:
        from prometheus_client import CollectorRegistry, generate_latest, multiprocess

        self.served(holders)
        if not self.multiprocess:
            return bytes(generate_latest(self.registry))
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return bytes(generate_latest(registry))


def status_of(exc: SiamIndexError) -> int:
    """The HTTP status of a library error: 404, 409, 422, else 500."""
    if isinstance(exc, IndexNotFound | ItemNotFound):
        return 404
    if isinstance(exc, IndexLocked):
        return 409
    if isinstance(exc, DataError | BadSearchSetting):
        return 422
    return 500


def validation_message(exc: RequestValidationError) -> tuple[int, str]:
    """The status and one-line error of a request FastAPI could not validate."""
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return 400, "The request body is not valid JSON; send a JSON object."
    first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
    where = ".".join(str(part) for part in first.get("loc", ()) if part != "body") or "body"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return 422, f"{where}: {first.get('msg', 'invalid')}{more}. See /openapi.json for the schema."


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before it is parsed."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.limit):
            await self._refuse(send)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise _TooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send: Send) -> None:
        size = f"{self.limit / 2**20:.3g} MB" if self.limit >= 2**20 else f"{self.limit} bytes"
        body = json.dumps(
            {"error": f"Request body over {size}; send fewer or smaller images."}
        ).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class Measured:
    """ASGI middleware: each request counted by method, route and status, and its latency
    observed. Plain ASGI, because Starlette's ``BaseHTTPMiddleware`` (``@app.middleware``) runs
    every request in a task group of its own and re-wraps its body stream: a tenth of a served
    single-image query's time under load (py-spy)."""

    def __init__(self, app: Any, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def sent(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sent)
        finally:  # the router put the matched route into the scope
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - started)


def install(app: FastAPI, config: Any, metrics: Metrics, holders: dict[str, IndexHolder]) -> None:
    """Add the body limit, request metrics, /metrics and the offline docs to ``app``."""

    app.add_middleware(Measured, metrics=metrics)
    app.add_middleware(BodyLimit, limit=config.limits.max_body_bytes)

    @app.get("/metrics", include_in_schema=False)
    async def prometheus() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(metrics.render(holders), media_type=CONTENT_TYPE_LATEST)

    _install_docs(app)


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at /docs from the files of the ``swagger-ui-bundle`` package: nothing from a
    CDN, so the docs work offline."""
    from fastapi.openapi.docs import get_swagger_ui_html
    from fastapi.staticfiles import StaticFiles
    from swagger_ui_bundle import swagger_ui_path

    app.mount("/docs-assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="siamindex API",
            swagger_js_url="/docs-assets/swagger-ui-bundle.js",
            swagger_css_url="/docs-assets/swagger-ui.css",
            swagger_favicon_url="/docs-assets/favicon-32x32.png",
        )


INLINE_IMAGES, INLINE_BYTES = 4, 16_384  # decoded on the event loop at most: about a millisecond


def small(specs: list[dict[str, Any]]) -> bool:
    """Whether request IMAGEs are few and small enough to decode without leaving the event
    loop: png/npy by their encoded length, pixels small by nature; refs never (the first one
    reads the dataset)."""
    if len(specs) > INLINE_IMAGES or any(spec.get("ref") is not None for spec in specs):
        return False
    encoded = sum(len(spec.get("png") or "") + len(spec.get("npy") or "") for spec in specs)
    return encoded <= INLINE_BYTES


def decode_all(specs: list[dict[str, Any]], prepare: str, limits: Limits, what: str) -> np.ndarray:
    """Request IMAGEs as (n, 28, 28) uint8; dataset refs are gathered in one step.

    Raises:
        DataError: an image is wrong (named by its position, e.g. "claims[3].image").
    """
    from siamindex.data import load_dataset

    out = np.empty((len(specs), 28, 28), np.uint8)
    refs: dict[str, list[tuple[int, int]]] = {}
    field = ".image" if what == "claims" else ""
    for i, spec in enumerate(specs):
        ref = spec.get("ref")
        one_ref = isinstance(ref, str) and len(image_kinds(spec)) == 1
        match = DATASET_REF.match(str(ref)) if one_ref else None
        if match:
            refs.setdefault(match[1], []).append((i, int(match[2])))
        else:
            out[i] = decode_request_image(spec, f"{what}[{i}]{field}", prepare, limits)
    for split, wanted in refs.items():
        dataset = load_dataset(None, split)
        rows = np.array([row for _, row in wanted])
        if rows.max() >= len(dataset):
            i, row = next((i, r) for i, r in wanted if r >= len(dataset))
            raise DataError(
                f"{what}[{i}]{field}: ref mnist:{split}:{row} is outside 0-{len(dataset) - 1}."
            )
        out[[i for i, _ in wanted]] = dataset.images[rows]
    return out


def info(current: Served) -> dict[str, Any]:
    """What ``siamindex info --format json`` prints, plus the served generation."""
    return {**current.index.info().to_dict(), "generation": current.generation}


def writer(current: Served) -> Index:
    """A fresh handle on the served index for one write (the write re-reads it under the
    writer lock), sharing the warm encoder."""
    return Index(
        current.index.path, current.index.folder, current.index.store, current.index.embedder
    )


def stored_png(current: Served, row_id: int) -> bytes:
    """A stored image as PNG bytes.

    Raises:
        ItemNotFound: no such id, or its pixels are not kept (images added by hand to a bundle that
            does not keep them).
    """
    from PIL import Image

    try:
        row = int(current.index.store.rows_of(np.array([row_id]))[0])
    except KeyError:
        raise ItemNotFound(f"Id {row_id} is not in index '{current.name}'.") from None
    (pixels,) = current.index.stored_images(np.array([row]))
    if pixels is None:
        raise ItemNotFound(f"The pixels of id {row_id} are not kept by this index.")
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
