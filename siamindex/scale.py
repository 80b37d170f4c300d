"""Builds at scale: shards embedded by an engine, streamed into one bundle.

``build(settings)`` is what ``build-index`` calls. Small builds of files on the local engine take
``build.build_index``'s road (everything in memory, as always). The others, an augmented MNIST
of any size (``mnist-aug:N``) or any build on Ray, stream: the dataset is cut into shards
(``shards.plan``), an engine loads and embeds each one (here, or on a pool of Ray actors that each
load the encoder once: ``cluster``), and this process writes each embedded shard into the new
bundle as it arrives: rows into the HDF5 metadata, vectors into the FAISS index. Nothing here
ever holds all images or all vectors:

- an index type that needs training (IVF) is trained on the first shards (the FAISS guidelines'
  30 to 256 points per list, at least 50,000), which are then added; later shards go straight in;
- the thresholds are calibrated on at most 200,000 stored rows, read back from the metadata
  (all of them for smaller indexes, so that a local and a Ray build calibrate alike).

The bundle is verified and published atomically like every other (``bundle.publish``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import augmented, bundle, graphs, shards
from siamindex.build import (
    OPEN_SET_SEED,
    BuildSettings,
    Phases,
    build_facts,
    build_index,
    calibrate_build,
    check_settings,
    open_set_count,
    peak_memory_mb,
    training_report_of,
)
from siamindex.embedding import Embedder, embed_in_chunks, load_embedder
from siamindex.errors import BadIndexType, DataError
from siamindex.index import Index
from siamindex.metadata import write_header, write_rows
from siamindex.store import TRAINING_SAMPLE, index_kind, new_faiss_index

logger = logging.getLogger(__name__)

ENGINES = ("local", "ray")
CALIBRATION_ROWS = 200_000  # stored rows the thresholds are calibrated on, at most
POINTS_PER_LIST = 64  # IVF training points per list (FAISS asks for 30 to 256)


def streams(settings: BuildSettings) -> bool:
    """Whether a build streams shards (``mnist-aug:N`` data, or the Ray engine)."""
    return settings.engine != "local" or augmented.is_spec(settings.data_dir)


def build(settings: BuildSettings, embed: Embedder | None = None) -> tuple[Index, Phases]:
    """Build an index the way its settings ask: in memory, or streamed shard by shard.

    Raises:
        IndexExists, IndexLocked, DataError, EncoderError, BadIndexType, EngineError.
    """
    if not streams(settings):
        return build_index(settings, embed)
    return build_streamed(settings)


def build_streamed(settings: BuildSettings) -> tuple[Index, Phases]:
    """Embed a dataset shard by shard on the settings' engine into a new bundle, published
    atomically. See the module's docstring."""
    if settings.engine not in ENGINES:
        raise DataError(f"Unknown engine '{settings.engine}'; use one of {', '.join(ENGINES)}.")
    path = check_settings(settings)
    data = None if settings.data_dir is None else str(settings.data_dir)
    planned = shards.plan(data, tuple(settings.splits), settings.resize)
    tasks = list(planned.tasks)
    unlike = open_set_count(settings, planned.source)
    if unlike:
        tasks.append(
            shards.ShardTask(None, shards.OPEN_SET, OPEN_SET_SEED + settings.seed, unlike, -1)
        )
    if settings.engine == "ray":
        from siamindex import cluster

        cluster.require_ray()  # before the lock and the partial folder
    phases = Phases()
    encoder_file = Path(settings.encoder)
    with bundle.writer_lock(path):
        embedded = _engine(settings, tasks)
        writer = _StreamWriter(settings, planned, phases)
        bundle.publish(
            path,
            lambda into: bundle.write_bundle(
                into,
                lambda folder: writer.write(folder, embedded),
                encoder_file,
                training_report_of(encoder_file),
            ),
            force=settings.force,
        )
        writer.index = writer.graphs = None  # published: free them before the bundle is opened
    logger.info("built %s: %s", path, phases.seconds)
    return Index.open(path), phases


def _engine(settings: BuildSettings, tasks: list[shards.ShardTask]) -> Iterator[shards.Columns]:
    if settings.engine == "ray":
        from siamindex import cluster

        return cluster.embed_shards(
            tasks, settings.encoder, settings.batch_size, settings.address, settings.workers
        )
    return local_shards(tasks, settings.encoder, settings.batch_size)


def local_shards(
    tasks: list[shards.ShardTask], encoder: str | Path, batch_size: int
) -> Iterator[shards.Columns]:
    """The local engine: each shard loaded and embedded in this process, in order."""
    embed = load_embedder(Path(encoder), batch_size)
    for task in tasks:
        yield shards.embed_shard(task, lambda x: embed_in_chunks(embed, x, 4 * batch_size, False))


class _StreamWriter:
    """Writes embedded shards into a bundle folder as they arrive, then calibrates."""

    def __init__(self, settings: BuildSettings, planned: shards.Plan, phases: Phases) -> None:
        self.settings, self.planned, self.phases = settings, planned, phases
        self.fingerprint = hashlib.sha256()
        self.index: Any = None
        self.pending: list[np.ndarray] = []  # vectors waiting for the quantizer to be trained
        self.pending_ids: list[np.ndarray] = []
        self.unlike: np.ndarray | None = None
        self.stored = 0
        self.worker_peaks: dict[str, float] = {}
        self.graphs: graphs.Graphs | None = None  # HNSW types: a graph per class

    def write(self, folder: Path, embedded: Iterator[shards.Columns]) -> None:
        import faiss
        import h5py

        with h5py.File(folder / bundle.METADATA_FILE, "w") as handle:
            write = None
            started = time.perf_counter()
            for columns in embedded:
                self._tick("wait for shards", started)
                self._note_worker(columns)
                if columns["split"].size and columns["split"][0] == shards.OPEN_SET:
                    self.unlike = columns["embeddings"]
                    started = time.perf_counter()
                    continue
                if write is None:
                    dim = int(columns["embeddings"].shape[1])
                    write = write_rows(handle, self.planned.count, dim, images=True)
                    self.index = new_faiss_index(dim, self.settings.index_type)
                    self.graphs = {} if index_kind(self.index) == "hnsw" else None
                adding = time.perf_counter()
                self._expect(columns["ids"])
                write(int(columns["ids"][0]), columns, columns["images"])
                self._fingerprint(columns)
                self._add(columns["embeddings"], columns["ids"])
                if self.graphs is not None:
                    m = graphs.width(self.index)
                    graphs.add_to(self.graphs, columns["embeddings"], columns["labels"], m)
                self._tick("add", adding)
                started = time.perf_counter()
            if write is None or self.stored != self.planned.count:
                raise DataError(
                    f"The engine delivered {self.stored} of {self.planned.count} rows; the "
                    "build stopped and the old index (if any) is unchanged."
                )
            self._add(None, None)  # whatever still waits for training
            self.phases.peak_mb["embed and add"] = peak_memory_mb() or 0.0
            for pid, peak in self.worker_peaks.items():
                self.phases.peak_mb[f"worker {pid}"] = peak
            with self.phases("calibrate"):
                self._calibrate(handle, dim)
        with self.phases("write index"):
            faiss.write_index(self.index, str(folder / bundle.FAISS_FILE))
            if self.graphs is not None:
                graphs.write(folder / bundle.CLASS_GRAPHS_FILE, self.graphs)

    def _tick(self, phase: str, started: float) -> None:
        seconds = self.phases.seconds
        seconds[phase] = round(seconds.get(phase, 0.0) + time.perf_counter() - started, 3)

    def _note_worker(self, columns: shards.Columns) -> None:
        """Add up the engine's own seconds (across its workers) and each worker's memory."""
        for phase, column in (
            ("load (worker s)", "load_seconds"),
            ("embed (worker s)", "embed_seconds"),
        ):
            seconds = self.phases.seconds
            seconds[phase] = round(seconds.get(phase, 0.0) + float(np.sum(columns[column])), 3)
        if "worker" in columns and len(columns["worker"]):
            pid, peak = str(columns["worker"][0]), float(np.max(columns["worker_peak_mb"]))
            self.worker_peaks[pid] = max(self.worker_peaks.get(pid, 0.0), peak)

    def _expect(self, ids: np.ndarray) -> None:
        if not len(ids) or ids[0] != self.stored or ids[-1] != self.stored + len(ids) - 1:
            raise RuntimeError(f"shard out of order: ids from {ids[:1]}, expected {self.stored}")
        self.stored += len(ids)

    def _fingerprint(self, columns: shards.Columns) -> None:
        """``build.dataset_fingerprint``, one shard at a time."""
        for split, label, image in zip(
            columns["split"], columns["labels"], columns["image_sha256"], strict=True
        ):
            self.fingerprint.update(f"{split}:{label}:{image}\n".encode())

    def _add(self, vectors: np.ndarray | None, ids: np.ndarray | None) -> None:
        """Add a shard's vectors; an untrained index first gathers enough to train on."""
        if vectors is not None and ids is not None:
            if self.index.is_trained:
                self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), ids)
                return
            self.pending.append(vectors)
            self.pending_ids.append(ids)
            if sum(map(len, self.pending)) < self._training_size():
                return
        if not self.pending:
            return
        gathered = np.ascontiguousarray(np.concatenate(self.pending), np.float32)
        gathered_ids = np.concatenate(self.pending_ids)
        self.pending, self.pending_ids = [], []
        if not self.index.is_trained:
            with self.phases("train quantizer"):
                self._train(gathered)
        self.index.add_with_ids(gathered, gathered_ids)

    def _training_size(self) -> int:
        import faiss

        try:
            lists = int(faiss.extract_index_ivf(self.index).nlist)
        except RuntimeError:  # not an IVF type (e.g. PQ alone): the usual sample
            return min(self.planned.count, TRAINING_SAMPLE)
        return min(self.planned.count, max(TRAINING_SAMPLE, POINTS_PER_LIST * lists))

    def _train(self, vectors: np.ndarray) -> None:
        rng = np.random.default_rng(self.settings.seed)
        size = min(len(vectors), self._training_size())
        sample = vectors[np.sort(rng.choice(len(vectors), size, replace=False))]
        try:
            self.index.train(sample)
        except RuntimeError as exc:
            raise BadIndexType(
                f"FAISS cannot train index type '{self.settings.index_type}' on {len(sample)} "
                f"vectors ({str(exc).strip().splitlines()[-1][:120]}); use fewer lists or 'flat'."
            ) from None

    def _calibrate(self, handle: Any, dim: int) -> None:
        """Thresholds from the stored rows (a seeded sample beyond 200,000), then the header."""
        count = self.planned.count
        labels = handle["labels"][()]
        if count <= CALIBRATION_ROWS:
            rows = np.arange(count)
            vectors = handle["embeddings"][()]
        else:
            rng = np.random.default_rng(self.settings.seed)
            rows = np.sort(rng.choice(count, CALIBRATION_ROWS, replace=False))
            vectors = _read_rows(handle["embeddings"], rows)
        calibrated = calibrate_build(
            self.settings, vectors, labels[rows], self.unlike, len(self.planned.class_names)
        )
        facts = build_facts(
            self.settings,
            calibrated,
            embedding_dim=dim,
            fingerprint=self.fingerprint.hexdigest(),
            source=self.planned.source,
            count=count,
        )
        write_header(
            handle,
            self.planned.class_names,
            calibrated.class_thresholds,
            calibrated.calibration.probability,
            facts,
            count,
        )


def _read_rows(dataset: Any, rows: np.ndarray, chunk: int = 100_000) -> np.ndarray:
    """Sorted ``rows`` of a 2-d HDF5 dataset, read a chunk of rows at a time."""
    parts = []
    for start in range(0, dataset.shape[0], chunk):
        inside = rows[(rows >= start) & (rows < start + chunk)]
        if inside.size:
            parts.append(dataset[start : start + chunk][inside - start])
    return np.concatenate(parts).astype(np.float32)
