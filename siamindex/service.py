"""What ``siamindex serve`` keeps warm, apart from HTTP: the served indexes, their hot swap, and
images given in requests.

Each served index is a ``Served`` generation: an open ``Index``, warmed (its encoder has run
once), with the micro-batcher that embeds for it. A watcher notices when the index name points at
a new bundle (a build, ``add`` or ``remove`` from the CLI or the API), opens and warms it beside
the current one, and then switches with one assignment. A request takes the generation current
when it starts and finishes on it; the old one is dropped when no request holds it any more.
The HTTP layer is ``siamindex.api``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import bundle
from siamindex.batcher import MicroBatcher
from siamindex.data import decode_image_bytes
from siamindex.embedding import embed_distinct, load_embedder
from siamindex.errors import DataError
from siamindex.index import Index
from siamindex.inputs import load_one, pixels_from_array

logger = logging.getLogger(__name__)
IMAGE_KINDS = ("png", "npy", "pixels", "ref")
DATASET_REF = re.compile(r"^mnist:(train|test):(\d+)$")  # groups: split, row


def image_kinds(spec: dict[str, Any]) -> list[str]:
    """Which of the IMAGE kinds a request IMAGE gives (exactly one is valid)."""
    return [kind for kind in IMAGE_KINDS if spec.get(kind) is not None]


@dataclass(frozen=True)
class Limits:
    """What one request may carry.

    Attributes:
        max_body_bytes: request body size (413 beyond).
        max_images: images (or claims) in one request (413 beyond).
        max_image_side: width and height of an uploaded PNG/JPEG (422 beyond).
    """

    max_body_bytes: int = 64 * 2**20
    max_images: int = 25_000
    max_image_side: int = 2048


@dataclass
class Served:
    """One generation of a served index: the open index and its batchers.

    ``batcher`` embeds (check, compare, add); single-image queries go through ``query_batcher``,
    which embeds and searches concurrent queries together: a flat FAISS search of many queries
    at once runs as one matrix product, several times faster per query than one by one.
    """

    name: str
    index: Index
    batcher: MicroBatcher
    generation: int
    encoder_sha256: str
    opened: float = field(default_factory=time.time)
    _query_batchers: dict[tuple[int, int | None, int | None], MicroBatcher] = field(
        default_factory=dict
    )

    @property
    def folder(self) -> Path:
        return self.index.folder

    def query_batcher(self, k: int, nprobe: int | None, ef_search: int | None) -> MicroBatcher:
        """The batcher of queries with these search settings (answers: one QueryResult per
        image, named by its row in the batch)."""
        key = (k, nprobe, ef_search)
        if key not in self._query_batchers:
            index = self.index

            def run(images: np.ndarray) -> list[Any]:
                return index.query_vectors(index.embed(images), k, None, nprobe, ef_search)

            batcher = self.batcher
            self._query_batchers[key] = MicroBatcher(
                run, batcher.max_batch, batcher.max_wait, batcher.on_batch
            )
        return self._query_batchers[key]

    async def close(self) -> None:
        """Stop this generation's query workers once their queued requests are answered."""
        for batcher in self._query_batchers.values():
            await batcher.close()


class IndexHolder:
    """The current generation of one served index, swapped when the name moves.

    Args:
        name: the index name or path, as given to ``serve --index``.
        max_batch, max_wait: the micro-batcher's bounds.
        compiled: run the encoder compiled by XLA (``model.embed``), every batch shape
            compiled when a new encoder is loaded.
    """

    def __init__(
        self, name: str, max_batch: int = 256, max_wait: float = 0.002, compiled: bool = True
    ) -> None:
        self.name = name
        self.compiled = compiled
        self.path = bundle.index_path(name)
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.current: Served | None = None
        self.warming: Path | None = None  # a new bundle being opened and warmed
        self._lock = asyncio.Lock()

    @property
    def ready(self) -> bool:
        """Serving the bundle the name points at, warm (False while a new one warms)."""
        return self.current is not None and self.warming is None

    async def load(self) -> Served:
        """Open and warm the bundle the name points at now, and serve it."""
        await self.refresh(force=True)
        assert self.current is not None
        return self.current

    async def refresh(self, force: bool = False) -> bool:
        """Serve the bundle the name points at, if it is not the one served. True if swapped.

        Raises:
            IndexNotFound, IncompatibleIndex: the bundle cannot be opened (the current
                generation stays).
        """
        async with self._lock:
            target = await asyncio.to_thread(bundle.resolve_bundle, self.path)
            if not force and self.current is not None and target == self.current.folder:
                return False
            self.warming = target
            try:
                served = await asyncio.to_thread(self._open_and_warm)
            finally:
                self.warming = None
            previous, self.current = self.current, served
            if previous is not None:  # its requests still finish; its idle workers stop
                asyncio.get_running_loop().create_task(previous.close())
            logger.info(
                "serving %s generation %d (%s)", self.name, served.generation, served.folder.name
            )
            return True

    def _open_and_warm(self) -> Served:
        previous = self.current
        index = Index.open(self.path)
        sha = str((index.store.manifest or {})["files"][bundle.ENCODER_FILE]["sha256"])
        if previous is not None and previous.encoder_sha256 == sha:
            # The same encoder file: keep the warm encoder and its batcher.
            index = Index(index.path, index.folder, index.store, previous.index.embedder)
            batcher = previous.batcher
        else:  # compiled for every batch shape now, so that no request waits for it
            encoder_file = index.folder / bundle.ENCODER_FILE
            embedder = load_embedder(encoder_file, compiled=self.compiled)
            index = Index(index.path, index.folder, index.store, embedder)
            embed = functools.partial(embed_distinct, index.embedder)
            batcher = MicroBatcher(embed, self.max_batch, self.max_wait)
        blank = np.zeros((1, 28, 28), np.uint8)
        index.query_vectors(index.embed(blank), k=1)  # warm: the encoder has run once
        index.partition  # noqa: B018 (builds the per-class sub-indexes now, not on a request)
        generation = 1 if previous is None else previous.generation + 1
        return Served(self.name, index, batcher, generation, sha)

    async def watch(self, every: float, on_swap: Callable[[], None] | None = None) -> None:
        """Follow the index name until cancelled, swapping in each new bundle once warm (then
        calling ``on_swap``)."""
        while True:
            await asyncio.sleep(every)
            try:
                if await self.refresh() and on_swap is not None:
                    on_swap()
            except Exception as exc:  # keep serving what we have, and say why once per try
                logger.warning("index %s: not swapped (%s)", self.name, str(exc)[:200])


def index_key(name: str) -> str:
    """The name an index is served under (its last path part): ``indexes/mnist`` -> mnist."""
    return bundle.index_path(name).name


def decode_request_image(spec: dict[str, Any], where: str, prepare: str, limits: Limits) -> Any:
    """One request IMAGE: ``{"png": b64}`` (PNG or JPEG), ``{"npy": b64}``,
    ``{"pixels": [[...28 x 28...]]}`` or ``{"ref": "mnist:test:0"}``, as a (28, 28) uint8 array
    laid out by ``prepare`` (as the CLI's ``--prepare``).

    Raises:
        DataError: anything wrong with it, named by ``where`` (e.g. "images[3]").
    """
    given = image_kinds(spec)
    if len(given) != 1:
        got = ", ".join(given) or "none"
        raise DataError(f"{where}: give exactly one of {', '.join(IMAGE_KINDS)} (got {got}).")
    kind, value = given[0], spec[given[0]]
    if kind == "ref":
        if not isinstance(value, str) or not DATASET_REF.match(value):
            raise DataError(
                f"{where}: ref '{str(value)[:60]}' is not a dataset item; use mnist:test:N."
            )
        try:
            pixels, _, _ = load_one(value, "none")
        except DataError as exc:
            raise DataError(f"{where}: {exc}") from None
        return pixels[0]
    if kind == "pixels":
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise DataError(f"{where}: pixels must be 28 rows of 28 numbers 0-255.") from None
        if array.shape != (28, 28):
            raise DataError(f"{where}: pixels must be 28 rows of 28 numbers 0-255.")
        if not np.all(np.isfinite(array)):
            raise DataError(f"{where}: pixels must be numbers 0-255, not NaN or infinity.")
        if array.min() < 0 or array.max() > 255 or np.any(array != np.rint(array)):
            raise DataError(f"{where}: pixels must be whole numbers 0-255.")
        return _laid_out(array.astype(np.uint8), prepare, where)
    raw = _base64(value, where, kind)
    if kind == "npy":
        try:
            array = np.load(io.BytesIO(raw), allow_pickle=False)
        except Exception:  # numpy raises many types on garbage
            raise DataError(f"{where}: npy is not a .npy array saved with numpy.save.") from None
        if not isinstance(array, np.ndarray):
            raise DataError(f"{where}: npy holds more than one array.")
        pixels = pixels_from_array(array, where)
        if len(pixels) != 1:
            raise DataError(f"{where}: npy holds {len(pixels)} images; send one per IMAGE.")
        return _laid_out(pixels[0], prepare, where)
    _check_side(raw, where, limits)
    return decode_image_bytes(raw, where, prepare)


def decode_upload(raw: bytes, where: str, prepare: str, limits: Limits) -> Any:
    """An uploaded file (multipart): PNG/JPEG bytes, or a .npy array of one image.

    Raises:
        DataError: neither, or not one readable image.
    """
    kind = "npy" if raw[:6] == b"\x93NUMPY" else "png"
    return decode_request_image({kind: base64.b64encode(raw).decode()}, where, prepare, limits)


def _base64(value: Any, where: str, kind: str) -> bytes:
    if not isinstance(value, str):
        raise DataError(f"{where}: {kind} must be a base64 string.")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(
            f"{where}: {kind} is not valid base64 (truncated or not encoded?)."
        ) from None


def _check_side(raw: bytes, where: str, limits: Limits) -> None:
    """Refuse an image larger than the limit before decoding its pixels."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(raw)) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError):
        raise DataError(f"{where}: png is not a readable PNG/JPEG image.") from None
    if max(width, height) > limits.max_image_side:
        raise ImageTooLarge(
            f"{where}: image is {width}x{height}; at most {limits.max_image_side} px a side. "
            "Scale it down first."
        )


def _laid_out(pixels: np.ndarray, prepare: str, where: str) -> np.ndarray:
    if prepare == "none":
        return pixels
    from siamindex.prepare import prepare as lay_out

    try:
        return lay_out(pixels, prepare)
    except DataError as exc:
        raise DataError(f"{where}: {exc}") from None


class ImageTooLarge(DataError):
    """An uploaded image is larger than the server accepts."""
