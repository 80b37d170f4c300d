"""The Ray engine: shards embedded on a pool of Ray actors, each loading the encoder once.

``embed_shards`` runs a Ray Data pipeline over the build's shard tasks: ``map_batches`` over an
``ActorPoolStrategy`` pool of ``_ShardEmbedder`` actors, one shard per call, streamed back in id
order to the process that writes the bundle (``scale``). Shards are generated or read inside the
actors (``shards.embed_shard``), so no process ever holds the whole dataset, and the building
process never imports TensorFlow.

Resources are planned for small machines too: each actor asks for half a CPU, so that Ray Data's
own tasks always find a slot (actors that take whole CPUs starved them on 2 cores and the dataset
never finished), and limits TensorFlow to its share of the cores. A worker that dies is restarted
by Ray and its shard retried; a failure that persists becomes one ``EngineError``.

Ray is an optional extra: ``pip install 'siamindex[cluster]'``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from siamindex import shards
from siamindex.build import peak_memory_mb
from siamindex.errors import EngineError

INSTALL_HINT = "install it with: pip install 'siamindex[cluster]'"
ACTOR_CPUS = 0.5
KILL_ENV = "SIAMINDEX_TEST_KILL_SHARD"  # test hook: "FIRST_ID:FILE" kills the worker once


def require_ray() -> Any:
    """The ``ray`` module, with Ray Data.

    Raises:
        EngineError: Ray is not installed.
    """
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise EngineError(f"--engine ray needs Ray (with Ray Data); {INSTALL_HINT}.") from None
    return ray


def start(address: str | None = None) -> Any:
    """Join the Ray cluster at ``address``, or start a local one; nothing if already joined.

    Raises:
        EngineError: Ray is missing or the cluster cannot be reached.
    """
    ray = require_ray()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timing, every run
    if ray.is_initialized():
        return ray
    try:
        ray.init(
            address=address,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at '{address}'" if address else "a local Ray cluster"
        raise EngineError(
            f"Cannot start or join {where} ({_first_line(exc)}); check --address, or leave it "
            "out to start a local cluster."
        ) from None
    return ray


def embed_shards(
    tasks: list[shards.ShardTask],
    encoder: str | Path,
    batch_size: int,
    address: str | None = None,
    workers: int | None = None,
) -> Iterator[shards.Columns]:
    """Embed shard tasks on Ray, yielding each shard's columns in task order.

    Each yielded shard also has ``worker`` (pid) and ``worker_peak_mb`` (its resident peak)
    columns, so that a benchmark sees every process's memory.

    Raises:
        EngineError: Ray is missing, the cluster unreachable, or the pipeline failed.
    """
    encoder = str(Path(encoder).resolve())
    passed = {k: v for k, v in os.environ.items() if k == KILL_ENV}
    settings = {"encoder": encoder, "batch_size": batch_size}
    yield from _on_pool(tasks, _ShardEmbedder, settings, address, workers, passed)


def _on_pool(
    items: list[Any],
    actor: type,
    settings: dict[str, Any],
    address: str | None,
    workers: int | None,
    env: dict[str, str] | None = None,
) -> Iterator[dict[str, np.ndarray]]:
    """Run ``actor(**settings, threads=...)`` over dataclass ``items``, one per call, on a pool
    of Ray actors (one per CPU unless ``workers``), yielding their answers in item order."""
    ray = start(address)
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    context.execution_options.preserve_order = True  # answers come back in item order
    context.enable_progress_bars = False
    cpus = max(1.0, float(ray.cluster_resources().get("CPU", 1)))
    workers = workers or max(1, int(cpus))
    rows = [{"item": json.dumps(dataclasses.asdict(item))} for item in items]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
        actor,
        fn_constructor_kwargs={**settings, "threads": max(1, int(cpus // workers))},
        batch_size=1,
        batch_format="numpy",
        compute=ActorPoolStrategy(size=workers),
        num_cpus=ACTOR_CPUS,
        runtime_env={"env_vars": env} if env else None,
    )
    try:
        yield from dataset.iter_batches(batch_size=None, batch_format="numpy")
    except Exception as exc:  # Ray wraps worker failures in its own (many) exception types
        raise EngineError(
            f"The Ray engine failed ({_first_line(exc)}); nothing was published or written, the "
            "old index (if any) is unchanged. Run again; if it persists, try --engine local."
        ) from None


def _joined(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """One batch of columns from several."""
    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


class _ShardEmbedder:
    """A Ray actor: loads the encoder once, then embeds one shard task per call."""

    def __init__(self, encoder: str, batch_size: int, threads: int) -> None:
        _share_cores(threads)
        from siamindex.embedding import embed_in_chunks, load_embedder

        embed = load_embedder(Path(encoder), batch_size)
        self._embed = lambda images: embed_in_chunks(embed, images, 4 * batch_size, False)

    def __call__(self, batch: dict[str, np.ndarray]) -> shards.Columns:
        parts = []
        for text in batch["item"]:
            task = shards.ShardTask(**json.loads(str(text)))
            _maybe_die(task)
            parts.append(shards.embed_shard(task, self._embed))
        columns = _joined(parts)
        count = len(columns["ids"])
        columns["worker"] = np.full(count, os.getpid())
        columns["worker_peak_mb"] = np.full(count, peak_memory_mb() or 0.0)
        return columns


def _share_cores(threads: int) -> None:
    """Before TensorFlow loads (with the encoder): this actor's share of the cores, not all."""
    for name in ("TF_NUM_INTRAOP_THREADS", "TF_NUM_INTEROP_THREADS", "OMP_NUM_THREADS"):
        os.environ[name] = str(threads)


def _maybe_die(task: shards.ShardTask) -> None:
    """Test hook: with ``$SIAMINDEX_TEST_KILL_SHARD`` = "FIRST_ID:FILE", the worker embedding
    the shard whose first id is FIRST_ID dies (once: it creates FILE first)."""
    spec = os.environ.get(KILL_ENV)
    if not spec:
        return
    first_id, _, marker = spec.partition(":")
    if task.first_id == int(first_id) and not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os._exit(1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:200]


def check_chunks(
    chunks: list[Any], settings: Any, address: str | None = None, workers: int | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """Check claims chunks (``bulk.Chunk``) on Ray: an actor pool that each open the index
    (and its encoder) once; answers yielded in chunk order.

    Raises:
        EngineError: Ray is missing, the cluster unreachable, or the pipeline failed.
    """
    kwargs = {"settings": dataclasses.asdict(settings)}
    yield from _on_pool(chunks, _ChunkChecker, kwargs, address, workers)


class _ChunkChecker:
    """A Ray actor: opens the index once, then checks one claims chunk per call."""

    def __init__(self, settings: dict[str, Any], threads: int) -> None:
        _share_cores(threads)
        from siamindex import bulk

        self._check = bulk.ChunkChecker(bulk.CheckSettings(**settings))
        self._chunk = bulk.Chunk

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return _joined([self._check(self._chunk(**json.loads(str(t)))) for t in batch["item"]])
