"""Crash, corruption and concurrency survival of index bundles.

The default run is CI-sized; ``pytest -m slow`` runs the full counts (20 kills per command).
Set SIAMINDEX_RELIABILITY_REPORT=FILE to append the counts as JSON lines (for the README).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from siamindex.build import BuildSettings, build_index
from siamindex.bundle import (
    ENCODER_FILE,
    FAISS_FILE,
    MANIFEST_FILE,
    METADATA_FILE,
    PAUSE_ENV,
    WRITE_POINTS,
)
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


def _content(index: Index) -> dict[str, object]:
    """What a bundle holds, to tell the old state from the new one by content."""
    rows = index.store.rows
    return {
        "ids": rows.ids.tolist(),
        "labels": rows.labels.tolist(),
        "split": rows.split.tolist(),
        "classes": list(index.store.class_names),
        "embeddings": rows.embeddings,
        "threshold": index.facts.threshold,
    }


def _same_content(got: dict[str, object], want: dict[str, object]) -> bool:
    return all(
        np.allclose(got[key], want[key], atol=1e-5)  # type: ignore[arg-type]
        if key == "embeddings"
        else got[key] == want[key]
        for key in want
    ) and np.shape(got["embeddings"]) == np.shape(want["embeddings"])


def _answers_exactly(index: Index, queries: np.ndarray) -> None:
    """The index's k nearest equal a brute-force search of its own stored vectors (distances;
    the ids returned lie at those distances, so ties may come in any order)."""
    distances, ids = index.store.search(queries, QUERY_K)
    stored = index.store.rows.embeddings
    want = np.sort(np.linalg.norm(queries[:, None] - stored[None], axis=2), axis=1)[:, :QUERY_K]
    np.testing.assert_allclose(distances, want, atol=1e-5)
    own = np.linalg.norm(
        stored[index.store.rows_of(ids.ravel())] - np.repeat(queries, QUERY_K, 0), axis=1
    )
    np.testing.assert_allclose(own.reshape(ids.shape), distances, atol=1e-5)


def _fresh_copy(base: Path, where: Path) -> Path:
    """A private copy of the index at ``base`` (link plus bundle folder) under ``where``."""
    folder = base.resolve()
    where.mkdir(parents=True)
    shutil.copytree(folder, where / folder.name)
    (where / base.name).symlink_to(folder.name)
    return where / base.name


def _run_until(command: list[str], point: str, marker: Path) -> subprocess.Popen[bytes]:
    """Start ``command`` with the write-path hook set at ``point``; return once the writer is
    paused there (it waits while ``marker`` exists)."""
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, PAUSE_ENV: f"{point}:{marker}"},
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        if process.poll() is not None:
            raise AssertionError(
                f"{command[3]} exited ({process.returncode}) before reaching {point}: "
                + process.communicate()[1].decode()[-400:]
            )
        assert time.monotonic() < deadline, f"{command[3]} never reached {point}"
        time.sleep(0.01)
    assert marker.read_text().split()[0] == point
    return process


def _window(path: Path) -> dict[str, object]:
    """What lies on disk beside the index name: its target and the bundle folders."""
    versions = sorted(p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}@"))
    return {
        "target": os.readlink(path),
        "partial": [v for v in versions if v.endswith(".partial")],
        "complete": [v for v in versions if not v.endswith(".partial")],
    }


def _kill_in_every_window(bundle, tmp_path: Path, small_idx_dir: Path) -> dict[str, list[str]]:
    """For each writing command and each named point of the write path: start the command on a
    fresh copy of the index, pause it at the point, check the point's files are there, SIGKILL
    it, check it died of the signal, and check the index holds exactly the old content (killed
    before the link swap) or exactly the new one (after), answering like brute force."""
    index, encoder = bundle
    base = [sys.executable, "-m", "siamindex"]
    commands = {
        # Different content from the fixture's (test split only): old and new differ.
        "build-index --force": lambda path: [
            *base, "build-index", "--index", str(path), "--encoder", str(encoder),
            "--data", str(small_idx_dir), "--splits", "train,test", "--force", "-q",
        ],
        "add": lambda path: [*base, "add", "mnist:test:500", "--index", str(path), "--class", "7"],
        "remove": lambda path: [*base, "remove", "--index", str(path), "--ids", "10,11"],
        "relabel": lambda path: [
            *base, "relabel", "--index", str(path), "--ids", "10,11", "--class", _other(path),
        ],
    }  # fmt: skip
    expected_new = {
        "build-index --force": lambda path: build_index(
            BuildSettings(
                encoder=encoder, index=path, data_dir=small_idx_dir, splits=("train", "test"),
                force=True, progress=False,
            )
        )[0],
        "add": lambda path: _added(path),
        "remove": lambda path: _removed(path, [10, 11]),
        "relabel": lambda path: _relabelled(path, [10, 11], _other(path)),
    }  # fmt: skip
    old = _content(index)
    queries = index.store.rows.embeddings[:7]
    landed: dict[str, list[str]] = {}
    for name, make in commands.items():
        new = _content(expected_new[name](_fresh_copy(index.path, tmp_path / f"{name}-want")))
        assert not _same_content(new, old)
        landed[name] = []
        for point in WRITE_POINTS:
            path = _fresh_copy(index.path, tmp_path / f"{name}-{point}".replace(" ", ""))
            old_folder = os.readlink(path)
            marker = tmp_path / "paused"
            process = _run_until(make(path), point, marker)
            on_disk = _window(path)
            process.send_signal(signal.SIGKILL)
            assert process.wait(timeout=30) == -signal.SIGKILL
            process.stderr.close()  # type: ignore[union-attr]
            marker.unlink()
            published = WRITE_POINTS.index(point) >= WRITE_POINTS.index("link-swapped")
            if point in ("partial-created", "store-written"):
                assert len(on_disk["partial"]) == 1 and on_disk["target"] == old_folder
            elif point == "bundle-complete":
                assert on_disk["partial"] == [] and len(on_disk["complete"]) == 2
                assert on_disk["target"] == old_folder
            else:  # the link points at the new bundle; the old one stays for readers
                assert on_disk["target"] != old_folder and old_folder in on_disk["complete"]
            after = Index.open(path)
            assert _same_content(_content(after), new if published else old), (name, point)
            _answers_exactly(after, queries)
            # The next writer removes what the killed one left, and never opens it.
            after.remove([int(after.store.rows.ids[0])])
            assert _window(path)["partial"] == []
            landed[name].append(point)
    return landed


def _added(path: Path) -> Index:
    from siamindex.data import load_dataset

    index = Index.open(path)
    index.add(load_dataset(split="test").images[500:501], "7")
    return index


def _other(path: Path) -> str:
    """A class that ids 10 and 11 are not stored as (relabelling to it changes the content)."""
    index = Index.open(path)
    taken = set(index.store.rows.labels[index.store.rows_of(np.array([10, 11]))].tolist())
    return next(n for c, n in enumerate(index.store.class_names) if c not in taken)


def _relabelled(path: Path, ids: list[int], class_name: str) -> Index:
    index = Index.open(path)
    index.relabel(ids, class_name)
    return index


def _removed(path: Path, ids: list[int]) -> Index:
    index = Index.open(path)
    index.remove(ids)
    return index


def test_kills_in_every_window_of_the_write_path(bundle, tmp_path, small_idx_dir):
    landed = _kill_in_every_window(bundle, tmp_path, small_idx_dir)
    assert landed == {name: list(WRITE_POINTS) for name in landed}
    _record(kind="crash", kills={name: points for name, points in landed.items()})


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
import hashlib, json, os, sys, time
import numpy as np
from siamindex.index import Index

path, stop, log, k = sys.argv[1], sys.argv[2], sys.argv[3], 5
rng = np.random.default_rng(int(sys.argv[4]))
deadline = time.monotonic() + 300  # stops by itself should the test die
with open(log, "a", buffering=1) as out:
    while not os.path.exists(stop) and time.monotonic() < deadline:
        line = {"t": time.monotonic()}
        try:
            index = Index.open(path)
            rows = index.store.rows
            stored = rows.embeddings
            files = json.dumps(index.store.manifest["files"], sort_keys=True)
            line["manifest"] = hashlib.sha256(files.encode()).hexdigest()
            line["content"] = hashlib.sha256(rows.ids.tobytes() + stored.tobytes()).hexdigest()
            noise = rng.normal(0, 0.01, (4, stored.shape[1])).astype(np.float32)
            queries = stored[rng.integers(0, len(rows), 4)] + noise
            distances, ids = index.store.search(queries, k)
            # Brute force over the vectors of the bundle this reader opened.
            every = np.linalg.norm(queries[:, None] - stored[None], axis=2)
            want = np.sort(every, axis=1)[:, :k]
            found = stored[index.store.rows_of(ids.ravel())]
            own = np.linalg.norm(found - np.repeat(queries, k, 0), axis=1)
            line["exact"] = bool(
                np.allclose(distances, want, atol=1e-5)
                and np.allclose(own, distances.ravel(), atol=1e-5)
            )
        except Exception as exc:  # every failure is logged: the test wants none
            line["error"] = f"{type(exc).__name__}: {exc}"
        out.write(json.dumps(line) + "\n")
"""


def _signature(index: Index) -> tuple[str, str]:
    rows = index.store.rows
    content = hashlib.sha256(rows.ids.tobytes() + rows.embeddings.tobytes()).hexdigest()
    files = json.dumps((index.store.manifest or {})["files"], sort_keys=True)
    return hashlib.sha256(files.encode()).hexdigest(), content


def _log(path: Path) -> list[dict[str, object]]:
    text = path.read_text() if path.exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def test_readers_check_every_state_against_brute_force(
    bundle, tmp_path, mnist_test, small_idx_dir, monkeypatch
):
    """Four reader processes open and query the index in a loop while a writer makes 3 adds, a
    rebuild from other data and 2 removes, every one a distinct state. The writer pauses at each
    named point of its write path until every reader has opened the index again there; each
    reader compares its answers with a brute-force search of the bundle it opened, identified
    by its manifest."""
    index, encoder = bundle
    stop, marker = tmp_path / "stop", tmp_path / "paused"
    logs = [tmp_path / f"reader-{seed}.jsonl" for seed in range(4)]
    published = [_signature(index)]
    readers = [
        subprocess.Popen(
            [sys.executable, "-c", READER, str(index.path), str(stop), str(log), str(seed)],
            stderr=subprocess.DEVNULL,
        )
        for seed, log in enumerate(logs)
    ]

    def write() -> None:
        for i in range(3):
            index.add(mnist_test.images[400 + i : 401 + i], "4")
            published.append(_signature(index))
        rebuilt, _ = build_index(
            BuildSettings(
                encoder=encoder,
                index=index.path,
                data_dir=small_idx_dir,
                splits=("train", "test"),
                force=True,
                progress=False,
            )
        )
        published.append(_signature(rebuilt))
        for i in range(2):
            rebuilt.remove([20 + i])
            published.append(_signature(rebuilt))

    windows: list[tuple[str, float, float]] = []
    try:
        while not all(_log(log) for log in logs):  # readers started and looping
            time.sleep(0.05)
        monkeypatch.setenv(PAUSE_ENV, f"{','.join(WRITE_POINTS)}:{marker}")
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        while writer.is_alive():
            if not marker.exists():
                time.sleep(0.005)
                continue
            point, opened = marker.read_text().split()[0], time.monotonic()
            while not all(any(line["t"] > opened for line in _log(log)) for log in logs):
                time.sleep(0.01)
            windows.append((point, opened, time.monotonic()))
            marker.unlink()
        writer.join()
    finally:
        stop.write_text("")
        marker.unlink(missing_ok=True)
        for reader in readers:
            reader.wait(timeout=60)
    lines = {log.name: _log(log) for log in logs}
    states = dict(published)
    assert len(states) == len(set(states.values())) == 7  # seven distinct published states
    assert [point for point, _, _ in windows] == list(WRITE_POINTS) * 6  # every write paused
    for name, seen in lines.items():
        errors = [line["error"] for line in seen if "error" in line]
        assert errors == [], (name, errors[:3])
        assert all(line["exact"] for line in seen), name
        assert all(states.get(line["manifest"]) == line["content"] for line in seen), name
        assert len({line["manifest"] for line in seen}) > 1, f"{name} saw one state only"
        for point, opened, released in windows:
            assert any(opened < line["t"] < released for line in seen), (name, point)
    # Pruned as it went: the current bundle and the one it replaced remain.
    assert len([p for p in index.path.parent.iterdir() if p.name.startswith(".idx@")]) == 2
    _record(
        kind="concurrency",
        readers=len(logs),
        writes=6,
        paused_windows=len(windows),
        reader_opens=sum(len(seen) for seen in lines.values()),
        states_seen_per_reader=[len({line["manifest"] for line in s}) for s in lines.values()],
    )
