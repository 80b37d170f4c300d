"""The same vectors in siamindex and in each peer, asked the same questions (tools/bench_peers.py).

Every adapter stores (n, d) float32 vectors with ids 0..n-1 and an integer class per vector, and
answers three kinds of question with stored ids:

* ``batch(queries, k)``: the k nearest of each query, as the peer's batch API does it;
* ``single(query, k)``: the k nearest of one query (one call per query);
* ``members(queries, classes, k)``: the k nearest stored vectors *of each query's class* (the
  membership check), grouped by class so that each peer gets whole batches with one filter.

Each peer is used the way its documentation recommends: batch calls where it has them, its own
persistent store on disk, its documented filter for the class. ``Peer.build`` writes into a
folder; ``Peer.open`` reads it back (a fresh process's cold open).

The peers live in the ``bench`` extra (``pip install -e '.[bench]'``); a peer that is not
installed raises ``PeerMissing`` with the reason.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import store_of

from siamindex.defaults import DEFAULT_CLASS_EF


class PeerMissing(Exception):
    """The peer's package is not installed, or will not import here."""


def _need(module: str) -> Any:
    import importlib

    try:
        return importlib.import_module(module)
    except Exception as error:  # a broken install raises more than ImportError
        raise PeerMissing(f"{module}: {type(error).__name__}: {error}") from None


def by_class(classes: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(class, positions of the queries claiming it), one per distinct class."""
    for label in np.unique(classes):
        yield int(label), np.flatnonzero(classes == label)


def _padded(found: list[list[int]], k: int) -> np.ndarray:
    out = np.full((len(found), k), -1, dtype=np.int64)
    for i, ids in enumerate(found):
        out[i, : len(ids)] = ids[:k]
    return out


class Peer:
    """One store or library under one setting (exact, or an approximate one with its knob)."""

    name = ""
    exact = True
    knob: str | None = None  # the name of the speed/recall setting, for approximate peers

    def __init__(self, setting: int | None = None) -> None:
        self.setting = setting

    @property
    def label(self) -> str:
        return self.name if self.knob is None else f"{self.name} ({self.knob}={self.setting})"

    def build(self, folder: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
        raise NotImplementedError

    def open(self, folder: Path) -> None:
        raise NotImplementedError

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def single(self, query: np.ndarray, k: int) -> np.ndarray:
        return self.batch(query[None, :], k)[0]

    def members(self, queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
        raise NotImplementedError

    def close(self) -> None:
        """Release files and background threads (stores that hold them)."""


# -- siamindex -------------------------------------------------------------------------------


class SiamIndex(Peer):
    """A siamindex bundle's store (the FAISS index and HDF5 metadata), as ``Index`` uses it:
    ``IndexStore.search`` for queries and the per-class ``ClassPartition`` for membership."""

    name = "siamindex"
    index_type = "flat"

    def build(self, folder: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
        folder.mkdir(parents=True)
        store_of(vectors, labels, self.index_type).write(folder)

    def open(self, folder: Path) -> None:
        from siamindex.store import IndexStore

        self.store = IndexStore.read(folder)
        self._partition: Any = None

    @property
    def partition(self) -> Any:
        """Built on the first membership check, as ``Index.partition`` is."""
        from siamindex.search import ClassPartition

        if self._partition is None:
            rows = self.store.rows
            self._partition = ClassPartition(rows.embeddings, rows.labels)
        return self._partition

    def _knobs(self) -> dict[str, int]:
        return {}

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self.store.search(queries, k, **self._knobs())[1]

    def _member_knobs(self) -> dict[str, int]:
        return {}

    def members(self, queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
        rows = self.partition.search(queries, classes, k, **self._member_knobs())[1]
        return np.where(rows >= 0, self.store.rows.ids[np.maximum(rows, 0)], -1)


class SiamIndexIVF(SiamIndex):
    """An IVF bundle: queries in its IVF256 index, membership in an IVF index per class
    (``check --nprobe``), both with the same nprobe."""

    name = "siamindex IVF256"
    index_type = "IVF256,Flat"
    exact = False
    knob = "nprobe"

    def _knobs(self) -> dict[str, int]:
        return {"nprobe": int(self.setting or 1)}

    def _member_knobs(self) -> dict[str, int]:
        return self._knobs()


class SiamIndexHNSW(SiamIndex):
    """An HNSW bundle: queries in its HNSW32 graph; membership in an HNSW graph per class
    (``check --ef-search``, ``GraphPartition``), both with the same ef_search."""

    name = "siamindex HNSW32"
    index_type = "HNSW32"
    exact = False
    knob = "ef_search"
    partition_seconds: float | None = None  # the class graphs ready to search, once asked for

    def _knobs(self) -> dict[str, int]:
        return {"ef_search": int(self.setting or DEFAULT_CLASS_EF)}

    @property
    def partition(self) -> Any:
        """The bundle's class graphs (read with it), as ``Index.partition`` uses them."""
        from siamindex.search import GraphPartition

        if self._partition is None:
            started = time.perf_counter()
            rows, graphs = self.store.rows, self.store.class_graph_map
            self._partition = GraphPartition(
                self.store.index, rows.ids, rows.labels, graphs, DEFAULT_CLASS_EF
            )
            self.partition_seconds = time.perf_counter() - started
        return self._partition.tuned(self._knobs()["ef_search"])


# -- hnswlib and USearch: one HNSW graph for queries, one per class for membership ------------


class _Graphs(Peer):
    """One graph over everything for queries and one per class for membership, saved as
    ``all.SUFFIX`` and ``class-C.SUFFIX``; subclasses say how to make, save, load and ask one."""

    exact = False
    SUFFIX = ""

    def _graph(self, ids: np.ndarray, vectors: np.ndarray) -> Any:
        raise NotImplementedError

    def _save(self, graph: Any, path: Path) -> None:
        raise NotImplementedError

    def _load(self, path: Path, dim: int) -> Any:
        raise NotImplementedError

    def _query(self, graph: Any, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        """(n, k) int64 ids, -1 past what the graph holds; ``threads`` 0 means all."""
        raise NotImplementedError

    def build(self, folder: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self._save(self._graph(np.arange(len(vectors)), vectors), folder / f"all.{self.SUFFIX}")
        for label, rows in by_class(labels):
            self._save(self._graph(rows, vectors[rows]), folder / f"class-{label}.{self.SUFFIX}")
        np.save(folder / "shape.npy", np.array([len(vectors), vectors.shape[1]]))

    def open(self, folder: Path) -> None:
        dim = int(np.load(folder / "shape.npy")[1])
        self.whole = self._load(folder / f"all.{self.SUFFIX}", dim)
        self.classes = {
            int(p.stem.split("-")[1]): self._load(p, dim)
            for p in folder.glob(f"class-*.{self.SUFFIX}")
        }

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._query(self.whole, queries, k, threads=0)

    def single(self, query: np.ndarray, k: int) -> np.ndarray:
        return self._query(self.whole, query[None, :], k, threads=1)[0]

    def members(self, queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for label, where in by_class(classes):
            out[where] = self._query(self.classes[label], queries[where], k, threads=0)
        return out


class Hnswlib(_Graphs):
    """hnswlib (its docs' filter is a Python callable per candidate; an index per class is how
    its users filter fast)."""

    name = "hnswlib"
    knob = "ef"
    SUFFIX = "bin"
    M, EF_CONSTRUCTION = 16, 200

    def _graph(self, ids: np.ndarray, vectors: np.ndarray) -> Any:
        graph = _need("hnswlib").Index(space="l2", dim=vectors.shape[1])
        graph.init_index(max_elements=len(ids), M=self.M, ef_construction=self.EF_CONSTRUCTION)
        graph.add_items(vectors, ids)
        return graph

    def _save(self, graph: Any, path: Path) -> None:
        graph.save_index(str(path))

    def _load(self, path: Path, dim: int) -> Any:
        graph = _need("hnswlib").Index(space="l2", dim=dim)
        graph.load_index(str(path))
        graph.set_ef(int(self.setting or 10))
        return graph

    def _query(self, graph: Any, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        out = np.full((len(queries), k), -1, dtype=np.int64)
        width = min(k, graph.get_current_count())
        ids, _ = graph.knn_query(queries, k=width, num_threads=threads or -1)
        out[:, :width] = ids
        return out


class USearch(_Graphs):
    """USearch; ``exact=True`` is its brute-force mode on the same stored vectors."""

    name = "usearch"
    knob = "expansion_search"
    SUFFIX = "usearch"
    CONNECTIVITY, EXPANSION_ADD = 16, 128

    def _new(self, dim: int) -> Any:
        return _need("usearch.index").Index(
            ndim=dim,
            metric="l2sq",
            dtype="f32",
            connectivity=self.CONNECTIVITY,
            expansion_add=self.EXPANSION_ADD,
            expansion_search=int(self.setting or 64),
        )

    def _graph(self, ids: np.ndarray, vectors: np.ndarray) -> Any:
        graph = self._new(vectors.shape[1])
        graph.add(ids, vectors, threads=0)
        return graph

    def _save(self, graph: Any, path: Path) -> None:
        graph.save(str(path))

    def _load(self, path: Path, dim: int) -> Any:
        graph = self._new(dim)
        graph.load(str(path))
        graph.expansion_search = int(self.setting or 64)
        return graph

    def _query(self, graph: Any, queries: np.ndarray, k: int, threads: int) -> np.ndarray:
        found = graph.search(queries, k, threads=threads, exact=self.exact)
        keys = np.asarray(found.keys, dtype=np.int64).reshape(len(queries), -1)
        # One query gives a Matches (no counts), several a BatchMatches.
        counts = getattr(found, "counts", None)
        counts = np.asarray([len(found.keys)] if counts is None else counts).reshape(-1)
        width = np.arange(keys.shape[1])[None, :]
        return np.where(width < counts[:, None], keys, -1)[:, :k]


class USearchExact(USearch):
    name = "usearch exact"
    exact = True
    knob = None


# -- general-purpose stores: one collection, the class as metadata, a filter per class --------


class Chroma(Peer):
    """Chroma's persistent client; HNSW (its only index) with ``ef_search`` set in the
    collection's configuration; ``where={"class": c}`` for membership."""

    name = "chroma"
    exact = False
    knob = "ef_search"
    BATCH = 1000  # queries per call (its docs' batch API; one call of 10,000 is slower)

    def _client(self, folder: Path) -> Any:
        chromadb = _need("chromadb")
        return chromadb.PersistentClient(
            path=str(folder), settings=chromadb.Settings(anonymized_telemetry=False)
        )

    def build(self, folder: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
        client = self._client(folder)
        collection = client.create_collection(
            "vectors",
            configuration={"hnsw": {"space": "l2", "ef_construction": 200, "max_neighbors": 16}},
            embedding_function=None,
        )
        step = client.get_max_batch_size()
        for start in range(0, len(vectors), step):
            stop = min(start + step, len(vectors))
            collection.add(
                ids=[str(i) for i in range(start, stop)],
                embeddings=vectors[start:stop],
                metadatas=[{"class": int(c)} for c in labels[start:stop]],
            )

    def open(self, folder: Path) -> None:
        self.client = self._client(folder)
        self.collection = self.client.get_collection("vectors", embedding_function=None)
        if self.setting is not None:
            self.collection.modify(configuration={"hnsw": {"ef_search": int(self.setting)}})

    def _query(self, queries: np.ndarray, k: int, where: dict[str, Any] | None) -> np.ndarray:
        found: list[list[int]] = []
        for start in range(0, len(queries), self.BATCH):
            answer = self.collection.query(
                query_embeddings=queries[start : start + self.BATCH],
                n_results=k,
                where=where,
                include=[],
            )
            found += [[int(i) for i in ids] for ids in answer["ids"]]
        return _padded(found, k)

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._query(queries, k, None)

    def members(self, queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for label, where in by_class(classes):
            out[where] = self._query(queries[where], k, {"class": label})
        return out


class LanceDB(Peer):
    """LanceDB, embedded: a table with a vector column and the class; no vector index, so every
    search is its exact scan (an index pays off at millions of rows, its docs say); a multi-vector
    search per call and a prefilter ``class = c`` for membership."""

    name = "lancedb"
    BATCH = 1000

    def build(self, folder: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
        lancedb, pa = _need("lancedb"), _need("pyarrow")
        table = pa.table(
            {
                "id": pa.array(np.arange(len(vectors), dtype=np.int64)),
                "class": pa.array(labels.astype(np.int64)),
                "vector": pa.FixedSizeListArray.from_arrays(
                    pa.array(vectors.ravel()), vectors.shape[1]
                ),
            }
        )
        lancedb.connect(str(folder)).create_table("vectors", data=table)

    def open(self, folder: Path) -> None:
        self.table = _need("lancedb").connect(str(folder)).open_table("vectors")

    def _query(self, queries: np.ndarray, k: int, where: str | None) -> np.ndarray:
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for start in range(0, len(queries), self.BATCH):
            chunk = queries[start : start + self.BATCH]
            search = self.table.search(chunk if len(chunk) > 1 else chunk[0])
            if where is not None:
                search = search.where(where, prefilter=True)
            answer = search.limit(k).select(["id"]).to_arrow().to_pydict()
            positions = answer.get("query_index", [0] * len(answer["id"]))
            ranks = np.zeros(len(chunk), dtype=np.int64)
            for position, found in zip(positions, answer["id"], strict=True):
                if ranks[position] < k:
                    out[start + position, ranks[position]] = found
                    ranks[position] += 1
        return out

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._query(queries, k, None)

    def members(self, queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for label, where in by_class(classes):
            out[where] = self._query(queries[where], k, f"class = {label}")
        return out


class Qdrant(Peer):
    """Qdrant's local mode (``QdrantClient(path=...)``, no server): exact search in NumPy;
    ``query_batch_points`` for batches, a payload filter on the class for membership."""

    name = "qdrant local"
    BATCH = 1000

    def _client(self, folder: Path) -> Any:
        return _need("qdrant_client").QdrantClient(path=str(folder))

    def build(self, folder: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
        models = _need("qdrant_client.models")
        client = self._client(folder)
        client.create_collection(
            "vectors",
            vectors_config=models.VectorParams(
                size=vectors.shape[1], distance=models.Distance.EUCLID
            ),
        )
        client.upload_collection(
            "vectors",
            vectors=vectors,
            payload=[{"class": int(c)} for c in labels],
            ids=list(range(len(vectors))),
        )
        client.close()

    def open(self, folder: Path) -> None:
        self.client = self._client(folder)

    def _query(self, queries: np.ndarray, k: int, label: int | None) -> np.ndarray:
        models = _need("qdrant_client.models")
        where = None
        if label is not None:
            match = models.MatchValue(value=label)
            where = models.Filter(must=[models.FieldCondition(key="class", match=match)])
        found: list[list[int]] = []
        for start in range(0, len(queries), self.BATCH):
            requests = [
                models.QueryRequest(query=q.tolist(), filter=where, limit=k)
                for q in queries[start : start + self.BATCH]
            ]
            answers = self.client.query_batch_points("vectors", requests=requests)
            found += [[int(p.id) for p in answer.points] for answer in answers]
        return _padded(found, k)

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._query(queries, k, None)

    def single(self, query: np.ndarray, k: int) -> np.ndarray:
        answer = self.client.query_points("vectors", query=query.tolist(), limit=k)
        return _padded([[int(p.id) for p in answer.points]], k)[0]

    def members(self, queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for label, where in by_class(classes):
            out[where] = self._query(queries[where], k, label)
        return out

    def close(self) -> None:
        self.client.close()


class MilvusLite(Peer):
    """Milvus Lite (``MilvusClient("file.db")``), a FLAT (exact) L2 index; a batch ``search``
    per call and a boolean ``filter`` on the class for membership."""

    name = "milvus lite"
    BATCH = 1000
    INDEX = "FLAT"

    def _client(self, folder: Path) -> Any:
        folder.mkdir(parents=True, exist_ok=True)
        return _need("pymilvus").MilvusClient(str(folder / "milvus.db"))

    def build(self, folder: Path, vectors: np.ndarray, labels: np.ndarray) -> None:
        pymilvus = _need("pymilvus")
        client = self._client(folder)
        schema = pymilvus.MilvusClient.create_schema(auto_id=False)
        schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        schema.add_field("vector", pymilvus.DataType.FLOAT_VECTOR, dim=vectors.shape[1])
        schema.add_field("class", pymilvus.DataType.INT64)
        params = client.prepare_index_params()
        params.add_index("vector", index_type=self.INDEX, metric_type="L2")
        client.create_collection("vectors", schema=schema, index_params=params)
        for start in range(0, len(vectors), 10_000):
            rows = range(start, min(start + 10_000, len(vectors)))
            client.insert(
                "vectors",
                [{"id": i, "vector": vectors[i].tolist(), "class": int(labels[i])} for i in rows],
            )
        client.flush("vectors")
        client.close()
        self._release(folder)

    @staticmethod
    def _release(folder: Path) -> None:
        """Stop Milvus Lite's in-process server for the file, which ``close`` leaves running
        (it holds the file's lock until the process exits)."""
        from milvus_lite.server_manager import server_manager_instance

        server_manager_instance.release_server(str(folder / "milvus.db"))

    def open(self, folder: Path) -> None:
        self.folder = folder
        self.client = self._client(folder)
        self.client.load_collection("vectors")

    def _query(self, queries: np.ndarray, k: int, where: str) -> np.ndarray:
        found: list[list[int]] = []
        for start in range(0, len(queries), self.BATCH):
            answers = self.client.search(
                "vectors", data=queries[start : start + self.BATCH].tolist(), limit=k, filter=where
            )
            found += [[int(hit["id"]) for hit in hits] for hits in answers]
        return _padded(found, k)

    def batch(self, queries: np.ndarray, k: int) -> np.ndarray:
        return self._query(queries, k, "")

    def members(self, queries: np.ndarray, classes: np.ndarray, k: int) -> np.ndarray:
        out = np.full((len(queries), k), -1, dtype=np.int64)
        for label, where in by_class(classes):
            out[where] = self._query(queries[where], k, f"class == {label}")
        return out

    def close(self) -> None:
        self.client.close()
        self._release(self.folder)


PEERS: dict[str, Callable[[int | None], Peer]] = {
    "siamindex": SiamIndex,
    "siamindex IVF256": SiamIndexIVF,
    "siamindex HNSW32": SiamIndexHNSW,
    "hnswlib": Hnswlib,
    "usearch": USearch,
    "usearch exact": USearchExact,
    "chroma": Chroma,
    "lancedb": LanceDB,
    "qdrant local": Qdrant,
    "milvus lite": MilvusLite,
}


def folder_bytes(folder: Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(folder)
        for name in names
    )
