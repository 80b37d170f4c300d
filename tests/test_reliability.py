"""Crash, corruption and concurrency survival of index bundles.

The default run is CI-sized; ``pytest -m slow`` runs the full counts (20 kills per command).
Set SIAMINDEX_RELIABILITY_REPORT=FILE to append the counts as JSON lines (for the README).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from siamindex.build import BuildSettings, build_index
from siamindex.bundle import ENCODER_FILE, FAISS_FILE, MANIFEST_FILE, METADATA_FILE
from siamindex.errors import IncompatibleIndex
from siamindex.index import Index

TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"

QUERY_K = 5


def _record(**counts: object) -> None:
    target = os.environ.get("SIAMINDEX_RELIABILITY_REPORT")
    if target:
        with open(target, "a") as handle:
            handle.write(json.dumps(counts) + "\n")


@pytest.fixture
def bundle(tmp_path, small_idx_dir):
    encoder = shutil.copyfile(TINY_ENCODER, tmp_path / "enc.keras")
    index, _ = build_index(
        BuildSettings(
            encoder=encoder,
            index=tmp_path / "indexes" / "idx",
            data_dir=small_idx_dir,
            splits=("test",),
            progress=False,
        )
    )
    return index, encoder


def _answers(index: Index, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return index.store.search(queries, QUERY_K)


def _brute_force_ids(index: Index, queries: np.ndarray) -> np.ndarray:
    stored = index.store.rows.embeddings
    distances = np.linalg.norm(queries[:, None] - stored[None], axis=2)
    return index.store.rows.ids[np.argsort(distances, axis=1, kind="stable")[:, :QUERY_K]]


def _kill_at_moments(command: list[str], moments: int) -> list[float]:
    """Run ``command`` once to time it, then start it ``moments`` times and SIGKILL each run at
    evenly spread points of that time. Yields nothing; returns the kill times used."""
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True)
    duration = time.perf_counter() - started
    return [duration * (i + 0.5) / moments for i in range(moments)]


def _survives(index_path: Path, queries: np.ndarray, states: list[set[int]]) -> Index:
    """The index opens, verifies, is in one of the allowed states, and answers exactly."""
    reopened = Index.open(index_path)
    ids = set(reopened.store.rows.ids.tolist())
    assert ids in states, f"unexpected state with {len(ids)} ids"
    distances, found = _answers(reopened, queries)
    np.testing.assert_array_equal(found, _brute_force_ids(reopened, queries))
    assert not any(p.name.endswith(".partial") for p in [reopened.folder])
    return reopened


def _crash_rounds(bundle, moments: int) -> dict[str, int]:
    index, encoder = bundle
    queries = index.store.rows.embeddings[:7]
    path = index.path
    base = [sys.executable, "-m", "siamindex"]
    env_root = str(path.parent)
    survived = {}
    commands = {
        "build-index --force": lambda i: [
            *base,
            "build-index",
            "--index",
            str(path),
            "--encoder",
            str(encoder),
            "--data",
            os.environ["SMALL_IDX_DIR"],
            "--splits",
            "test",
            "--force",
            "-q",
        ],
        "add": lambda i: [*base, "add", f"mnist:test:{i}", "--index", str(path), "--class", "7"],
        "remove": lambda i: [*base, "remove", "--index", str(path), "--ids", str(10 + i)],
    }
    for name, make in commands.items():
        survived[name] = 0
        for i, delay in enumerate(_kill_at_moments(make(100), moments)):
            before = Index.open(path)
            old = set(before.store.rows.ids.tolist())
            want = _answers(before, queries)
            if name == "add":
                states = [old, old | {before.facts.next_id}]
            elif name == "remove":
                states = [old, old - {10 + i}]
            else:
                states = [old]
            process = subprocess.Popen(
                make(i),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                env={**os.environ, "SIAMINDEX_INDEXES": env_root},
            )
            time.sleep(delay)
            process.send_signal(signal.SIGKILL)
            process.wait()
            after = _survives(path, queries, states)
            if set(after.store.rows.ids.tolist()) == old:
                got = _answers(after, queries)
                np.testing.assert_array_equal(got[1], want[1])
                np.testing.assert_allclose(got[0], want[0], atol=1e-6)
            survived[name] += 1
    # The next writer removes whatever partial folders the killed ones left; none is ever opened.
    Index.open(path).remove([0])
    assert not [p.name for p in path.parent.iterdir() if p.name.endswith(".partial")]
    return survived


@pytest.fixture
def small_idx_env(small_idx_dir, monkeypatch):
    monkeypatch.setenv("SMALL_IDX_DIR", str(small_idx_dir))


def test_kills_at_spread_moments_leave_a_usable_index(bundle, small_idx_env):
    survived = _crash_rounds(bundle, moments=3)
    assert all(count == 3 for count in survived.values())
    _record(kind="crash", moments_per_command=3, survived=survived)


@pytest.mark.slow
def test_twenty_kills_per_command(bundle, small_idx_env):
    survived = _crash_rounds(bundle, moments=20)
    assert all(count == 20 for count in survived.values())
    _record(kind="crash", moments_per_command=20, survived=survived)


def test_every_flipped_byte_is_detected_on_open(bundle, tmp_path):
    index, _ = bundle
    copy = tmp_path / "copy"
    shutil.copytree(index.folder, copy)
    rng = np.random.default_rng(0)
    detected = {}
    for name in (ENCODER_FILE, FAISS_FILE, METADATA_FILE, MANIFEST_FILE):
        path = copy / name
        original = path.read_bytes()
        detected[name] = 0
        for offset in rng.choice(len(original), size=50, replace=False):
            damaged = bytearray(original)
            damaged[offset] ^= int(rng.integers(1, 256))
            path.write_bytes(bytes(damaged))
            with pytest.raises(IncompatibleIndex):
                Index.open(copy)
            detected[name] += 1
        path.write_bytes(original)
    Index.open(copy)  # restored: opens again
    assert all(count == 50 for count in detected.values())
    _record(kind="corruption", flips_detected=detected)


READER = r"""
import json, sys, time
import numpy as np
from siamindex.index import Index
path, stop, k = sys.argv[1], sys.argv[2], 5
loops, errors, counts = 0, [], set()
rng = np.random.default_rng(int(sys.argv[3]))
import os
while not os.path.exists(stop):
    try:
        index = Index.open(path)
        rows = index.store.rows
        assert index.store.index.ntotal == len(rows)
        queries = rows.embeddings[rng.integers(0, len(rows), 4)]
        distances, ids = index.store.search(queries, k)
        assert set(ids.ravel().tolist()) <= set(rows.ids.tolist())
        assert np.all(np.diff(distances, axis=1) >= -1e-6)
        counts.add(len(rows))
        loops += 1
    except Exception as exc:  # every failure counts: the test wants none
        errors.append(f"{type(exc).__name__}: {exc}")
print(json.dumps({"loops": loops, "errors": errors[:5], "error_count": len(errors),
                  "counts": sorted(counts)}))
"""


def test_readers_see_old_or_new_never_a_mix(bundle, tmp_path, mnist_test, small_idx_dir):
    index, encoder = bundle
    stop = tmp_path / "stop"
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(index.path), str(stop), str(seed)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in range(4)
    ]
    time.sleep(2.0)  # let the readers start looping
    published = {len(index.store.rows)}
    for i in range(6):
        index.add(mnist_test.images[i : i + 1], "4")
        published.add(len(index.store.rows))
    rebuilt, _ = build_index(
        BuildSettings(
            encoder=encoder,
            index=index.path,
            data_dir=small_idx_dir,
            splits=("test",),
            force=True,
            progress=False,
        )
    )
    published.add(len(rebuilt.store.rows))
    for i in range(3):
        rebuilt.remove([20 + i])
        published.add(len(rebuilt.store.rows))
    time.sleep(1.0)
    stop.write_text("")
    reports = [json.loads(reader.communicate(timeout=60)[0]) for reader in readers]
    for report in reports:
        assert report["error_count"] == 0, report["errors"]
        assert report["loops"] > 0
        assert set(report["counts"]) <= published
    _record(
        kind="concurrency",
        readers=4,
        reader_loops=sum(r["loops"] for r in reports),
        writes=10,
        reader_errors=0,
    )
