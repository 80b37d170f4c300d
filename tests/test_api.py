"""The HTTP API through FastAPI's in-process client, and ``siamindex serve`` as a real process.

Results are checked against the library's answers for the same images (one schema, the CLI's).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
import schemas
from fastapi.testclient import TestClient
from PIL import Image
from schemas import assert_schema
from serving import running_server

from siamindex.api import ServeConfig, create_app
from siamindex.index import Index
from siamindex.query import membership_summary, to_json
from siamindex.service import Limits

TOKEN = "test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
REF0 = {"ref": "mnist:test:0"}


def _client(path: Path, **config) -> TestClient:
    # The encoder runs by TensorFlow's graph here (compiling it costs seconds per app); the
    # compiled path is served by the real-process tests below and test_service.
    settings = {"token": TOKEN, "poll_seconds": 0.05, "compiled": False, **config}
    return TestClient(create_app(ServeConfig(indexes=(str(path),), **settings)))


def _close(got, want, where="$"):
    """Equal JSON values, floats within 1e-5 (the HTTP and library embeddings may differ in the
    last bits: the server batches the images differently)."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and set(got) == set(want), where
        for key in want:
            _close(got[key], want[key], f"{where}.{key}")
    elif isinstance(want, list | tuple):
        assert isinstance(got, list) and len(got) == len(want), where
        for i, (a, b) in enumerate(zip(got, want, strict=True)):
            _close(a, b, f"{where}[{i}]")
    elif isinstance(want, float) and not isinstance(want, bool):
        assert got == pytest.approx(want, abs=1e-5), where
    else:
        assert got == want, where


def _files_digest(path: Path) -> dict[str, str]:
    folder = path.resolve()
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


def _png(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def test_query_check_compare_equal_the_library(tiny_index, mnist_test):
    index = Index.open(tiny_index)
    images = mnist_test.images[500:504]
    with _client(tiny_index) as client:
        body = {"images": [{"pixels": image.tolist()} for image in images], "k": 3}
        reply = client.post("/v1/indexes/idx/query", json=body)
        assert reply.status_code == 200 and set(reply.json()) == {"result", "time"}
        want = to_json(index.query(images, k=3, names=[f"images[{i}]" for i in range(4)]))
        _close(reply.json()["result"], want)
        assert_schema(reply.json()["result"], schemas.QUERY)

        classes = [str((mnist_test.labels[500 + i] + i % 2) % 10) for i in range(4)]
        truth = [str(v) for v in mnist_test.labels[500:504]]
        claims = [
            {"image": {"png": _png(image)}, "class": c, "true_class": t}
            for image, c, t in zip(images, classes, truth, strict=True)
        ]
        reply = client.post("/v1/indexes/idx/check", json={"claims": claims, "per_class": True})
        names = [f"claims[{i}]" for i in range(4)]
        results = index.check(images, classes, True, names, truth)
        _close(
            reply.json()["result"],
            {"results": to_json(results), "summary": membership_summary(results)},
        )
        assert_schema(reply.json()["result"], schemas.CHECK)

        reply = client.post(
            "/v1/indexes/idx/compare",
            json={"first": {"ref": "mnist:test:500"}, "second": {"ref": "mnist:test:501"}},
        )
        want = to_json(index.compare(images[0], images[1], ("first", "second")))
        _close(reply.json()["result"], want)
        assert_schema(reply.json()["result"], schemas.COMPARE)

        info = client.get("/v1/indexes/idx").json()["result"]
        assert_schema(info, {**schemas.INFO, "generation": int})
        assert client.get("/v1/indexes").json()["result"] == [info]


def test_query_with_uploaded_files(tiny_index, mnist_test):
    index = Index.open(tiny_index)
    digit, other = mnist_test.images[510], mnist_test.images[511]
    buffer = io.BytesIO()
    np.save(buffer, other)
    files = [
        ("images", ("seven.png", base64.b64decode(_png(digit)), "image/png")),
        ("images", ("other.npy", buffer.getvalue(), "application/octet-stream")),
    ]
    with _client(tiny_index) as client:
        reply = client.post("/v1/indexes/idx/query/files", files=files, data={"k": "2"})
        assert reply.status_code == 200, reply.text
        want = to_json(index.query(np.stack([digit, other]), k=2, names=["seven.png", "other.npy"]))
        _close(reply.json()["result"], want)
        bad = [("images", ("x.png", b"not an image", "image/png"))]
        reply = client.post("/v1/indexes/idx/query/files", files=bad)
        assert reply.status_code == 422 and "x.png" in reply.json()["error"]


def test_writes_need_the_token_and_are_followed(tiny_index, mnist_test):
    before = _files_digest(tiny_index)
    with _client(tiny_index) as client:
        add = {"images": [{"ref": "mnist:test:600"}], "class": "3"}
        assert client.post("/v1/indexes/idx/add", json=add).status_code == 401
        wrong = {"Authorization": "Bearer not-the-token-at-all"}
        assert client.post("/v1/indexes/idx/add", json=add, headers=wrong).status_code == 403
        assert _files_digest(tiny_index) == before
        reply = client.post("/v1/indexes/idx/add", json=add, headers=AUTH)
        assert reply.status_code == 200
        assert_schema(reply.json()["result"], schemas.ADD)
        assert reply.json()["result"]["ids"] == [300] and reply.json()["result"]["count"] == 301
        # Its pixels are kept in the bundle and served as PNG.
        png = client.get("/v1/indexes/idx/images/300.png")
        assert png.status_code == 200
        added = np.asarray(Image.open(io.BytesIO(png.content)))
        np.testing.assert_array_equal(added, mnist_test.images[600])
        # Served at once: the added image is its own nearest match.
        found = client.post(
            "/v1/indexes/idx/query", json={"images": [{"ref": "mnist:test:600"}], "k": 1}
        )
        assert found.json()["result"][0]["matches"][0]["id"] == 300
        removed = client.post("/v1/indexes/idx/remove", json={"ids": [300, 7]}, headers=AUTH)
        assert_schema(removed.json()["result"], schemas.REMOVE)
        assert removed.json()["result"] == {
            "index": str(tiny_index),
            "removed": [7, 300],
            "count": 299,
        }
        assert client.get("/readyz").json()["result"]["generations"] == {"idx": 3}
        # A write from outside (the CLI, another process) is followed by the watcher.
        Index.open(tiny_index).remove([8])
        deadline = time.monotonic() + 20
        while client.get("/v1/indexes/idx").json()["result"]["count"] != 298:
            assert time.monotonic() < deadline, "the new bundle was never served"
            time.sleep(0.05)
    with _client(tiny_index, token=None) as client:
        reply = client.post("/v1/indexes/idx/remove", json={"ids": [9]}, headers=AUTH)
        assert reply.status_code == 403 and "start it with --token-file" in reply.json()["error"]


def test_audit_and_relabel_over_http(tiny_index):
    index = Index.open(tiny_index)
    planted = int(index.store.rows.ids[index.store.rows.labels == 1][5])
    with _client(tiny_index) as client:
        relabel = {"ids": [planted], "class": "7"}
        assert client.post("/v1/indexes/idx/relabel", json=relabel).status_code == 401
        reply = client.post("/v1/indexes/idx/relabel", json=relabel, headers=AUTH)
        assert reply.status_code == 200, reply.text
        assert_schema(reply.json()["result"], schemas.RELABEL)
        bad = {"ids": [planted], "class": "eleven"}
        reply = client.post("/v1/indexes/idx/relabel", json=bad, headers=AUTH)
        assert reply.status_code == 422 and "Unknown class 'eleven'" in reply.json()["error"]
        reply = client.get("/v1/indexes/idx/audit", params={"k": 10, "top": 20})
        assert reply.status_code == 200, reply.text
        result = reply.json()["result"]
        assert_schema(result, schemas.AUDIT)
        # The served index is the relabelled one, and its audit is the library's.
        want = to_json(Index.open(tiny_index).audit(10)[:20])
        _close(result["suspects"], want)
        assert planted in [s["id"] for s in result["suspects"]]
        assert client.get("/v1/indexes/idx/audit", params={"k": 0}).status_code == 422


@pytest.mark.parametrize(
    "route, body, status, message",
    [
        ("query", {"images": []}, 422, "images: List should have at least 1 item"),
        ("query", {"images": [{"png": "abc"}]}, 422, "images[0]: png is not valid base64"),
        ("query", {"images": [{"png": "iVBORw0KGgo="}]}, 422, "not a readable PNG/JPEG"),
        ("query", {"images": [{"pixels": [[1, 2]]}]}, 422, "pixels must be 28 rows"),
        ("query", {"images": [{"pixels": [[float("nan")] * 28] * 28}]}, 422, "not NaN or infinity"),
        ("query", {"images": [{"ref": "mnist:test:0"}], "k": 301}, 422, "k must be between 1"),
        ("query", {"images": [{"ref": "mnist:test:0"}], "nprobe": 2}, 422, "nprobe applies to IVF"),
        ("query", {"images": [{"ref": "../../etc/passwd"}]}, 422, "is not a dataset item"),
        ("query", {"images": [{"ref": "mnist:test:0"}], "extra": 1}, 422, "extra: Extra inputs"),
        ("check", {"claims": [{"image": REF0, "class": "eleven"}]}, 422, "Unknown class 'eleven'"),
        ("check", {"claims": [{"image": REF0}]}, 422, "claims.0.class: Field required"),
        ("check", {"claims": [{"image": REF0, "class": "7"}], "nprobe": 2}, 422, "nprobe applies"),
        ("check", {"claims": [{"image": REF0, "class": "7"}], "ef_search": 8}, 422, "ef_search ap"),
        ("check", {"claims": [{"image": REF0, "class": "7"}], "ef_search": 0}, 422, "or equal to"),
        ("compare", {"first": {"ref": "mnist:test:0"}}, 422, "second: Field required"),
        ("nothere", {}, 404, "No route POST /v1/indexes/idx/nothere"),
    ],
)  # fmt: skip
def test_bad_requests_get_one_line_4xx_and_change_nothing(tiny_index, route, body, status, message):
    before = _files_digest(tiny_index)
    with _client(tiny_index) as client:
        raw = json.dumps(body).encode()  # NaN goes out as the token NaN, which Python reads
        reply = client.post(
            f"/v1/indexes/idx/{route}", content=raw, headers={"content-type": "application/json"}
        )
    assert reply.status_code == status, reply.text
    assert set(reply.json()) == {"error"} and message in reply.json()["error"]
    assert "\n" not in reply.json()["error"]
    assert _files_digest(tiny_index) == before


def test_limits_and_unknown_index(tiny_index, mnist_test):
    limits = Limits(max_body_bytes=20_000, max_images=3, max_image_side=64)
    with _client(tiny_index, limits=limits) as client:
        many = {"images": [{"ref": f"mnist:test:{i}"} for i in range(4)]}
        reply = client.post("/v1/indexes/idx/query", json=many)
        assert (
            reply.status_code == 413
            and "4 images in one request; at most 3" in reply.json()["error"]
        )
        big = {"images": [{"pixels": mnist_test.images[0].tolist()}] * 3, "k": 1}
        big["pad"] = "x" * 30_000
        reply = client.post("/v1/indexes/idx/query", json=big)
        assert reply.status_code == 413 and "over 20000 bytes" in reply.json()["error"]
        huge = {"images": [{"png": _png(np.zeros((100, 20), np.uint8))}]}
        reply = client.post("/v1/indexes/idx/query", json=huge)
        assert reply.status_code == 422 and "at most 64 px a side" in reply.json()["error"]
        reply = client.post("/v1/indexes/other/query", json={"images": [{"ref": "mnist:test:0"}]})
        assert reply.status_code == 404 and "served: idx" in reply.json()["error"]
        assert client.get("/v1/indexes/idx/images/99999.png").status_code == 404


def test_probes_metrics_docs_and_page_work_offline(tiny_index):
    with _client(tiny_index) as client:
        alive = {"status": "alive", "pid": os.getpid()}  # the process that answers
        assert client.get("/healthz").json()["result"] == alive
        assert client.get("/readyz").json()["result"] == {"ready": True, "generations": {"idx": 1}}
        client.post("/v1/indexes/idx/query", json={"images": [{"ref": "mnist:test:0"}]})
        client.post("/v1/indexes/idx/query", json={"images": []})  # 422
        client.get("/nowhere")
        metrics = client.get("/metrics").text
        route = 'route="/v1/indexes/{name}/query"'
        assert f'siamindex_requests_total{{method="POST",{route},status="200"}} 1.0' in metrics
        assert f'siamindex_requests_total{{method="POST",{route},status="422"}} 1.0' in metrics
        assert (
            'siamindex_requests_total{method="GET",route="unmatched",status="404"} 1.0' in metrics
        )
        assert "siamindex_batch_images_count 1.0" in metrics  # one encoder call, the query's
        assert 'siamindex_index_generation{index="idx"} 1.0' in metrics
        schema = client.get("/openapi.json").json()
        assert {"/v1/indexes/{name}/query", "/v1/indexes/{name}/check", "/v1/prepare"} <= set(
            schema["paths"]
        )
        for page in ("/docs", "/"):
            text = client.get(page).text
            assert "http://" not in text.replace("http://www.w3.org", "") and "https://" not in text
        assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200
        png = client.get("/v1/indexes/idx/images/5.png")
        assert png.headers["content-type"] == "image/png"
        assert np.array_equal(
            np.asarray(Image.open(io.BytesIO(png.content))),
            Index.open(tiny_index).stored_images(np.array([5]))[0],
        )


def test_serve_as_a_process_answers_and_stops_gracefully_on_sigterm(tiny_index, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    with running_server(tiny_index, "--token-file", str(token_file)) as (process, base):
        reply = httpx.post(
            f"{base}/v1/indexes/idx/query", json={"images": [{"ref": "mnist:test:0"}]}
        )
        assert reply.status_code == 200 and reply.json()["result"][0]["matches"][0]["id"] == 0
        # A large check in flight when SIGTERM arrives still completes.
        claims = [
            {"image": {"ref": f"mnist:test:{i % 10000}"}, "class": "1"} for i in range(20_000)
        ]
        answer: dict[str, object] = {}

        def send() -> None:
            response = httpx.post(
                f"{base}/v1/indexes/idx/check", json={"claims": claims}, timeout=60
            )
            answer.update(
                status=response.status_code,
                count=len(response.json()["result"]["results"]),
                at=time.monotonic(),
            )

        sender = threading.Thread(target=send)
        sender.start()
        time.sleep(0.15)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        sender.join(60)
        _, stderr = process.communicate(timeout=30)
    # uvicorn shuts down gracefully, then re-raises the signal it caught (exit -SIGTERM).
    assert process.returncode in (0, -signal.SIGTERM), stderr[-2000:]
    assert answer["status"] == 200 and answer["count"] == 20_000
    assert answer["at"] > signalled  # it was in flight when the signal came
    assert TOKEN not in stderr and "Traceback" not in stderr


def test_check_with_nprobe_on_an_ivf_index_equals_the_library(tmp_path, small_idx_dir, mnist_test):
    from conftest import TINY_ENCODER

    from siamindex.build import BuildSettings, build_index

    path = tmp_path / "ivf"
    build_index(
        BuildSettings(
            encoder=TINY_ENCODER,
            index=path,
            data_dir=small_idx_dir,
            splits=("train",),
            index_type="IVF8,Flat",
            progress=False,
        )
    )
    index = Index.open(path)
    claims = [{"image": {"ref": f"mnist:test:{i}"}, "class": "3"} for i in range(40)]
    with _client(path) as client:
        got = {}
        for nprobe in (1, None):
            body = {"claims": claims, **({} if nprobe is None else {"nprobe": nprobe})}
            reply = client.post("/v1/indexes/ivf/check", json=body)
            assert reply.status_code == 200, reply.text
            got[nprobe] = [r["support_distance"] for r in reply.json()["result"]["results"]]
    vectors = index.embed(mnist_test.images[:40])
    for nprobe in (1, None):
        want = index.check_vectors(vectors, ["3"] * 40, nprobe=nprobe)
        np.testing.assert_allclose(got[nprobe], [r.support_distance for r in want], rtol=1e-4)
    assert got[1] != got[None]  # one list of each class's IVF index: really approximate


def test_check_with_ef_search_on_an_hnsw_index_searches_its_class_graphs(
    tiny_train_bundles, mnist_test
):
    path = tiny_train_bundles["hnsw"]
    claims = [{"image": {"ref": f"mnist:test:{i}"}, "class": "3"} for i in range(200)]
    got = {}
    with _client(path) as client:
        for ef in (1, 400):
            reply = client.post("/v1/indexes/hnsw/check", json={"claims": claims, "ef_search": ef})
            assert reply.status_code == 200, reply.text
            got[ef] = np.array([r["support_distance"] for r in reply.json()["result"]["results"]])
    flat = Index.open(tiny_train_bundles["flat"])
    exact = flat.check_vectors(flat.embed(mnist_test.images[:200]), ["3"] * 200)
    want = np.array([r.support_distance for r in exact])
    np.testing.assert_allclose(got[400], want, rtol=1e-5)  # wider than any class: exact
    assert np.all(got[1] >= want - 1e-5) and np.any(got[1] > want + 1e-5)


def _fresh(method: str, url: str, **kwargs) -> httpx.Response:
    """One request on a connection of its own (so that any worker may take it)."""
    with httpx.Client(timeout=30) as client:
        return client.request(method, url, **kwargs)


def test_serve_workers_share_the_port_follow_writes_and_add_up_metrics(tiny_index, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    extra = ("--token-file", str(token_file), "--workers", "2")
    with running_server(tiny_index, *extra) as (process, base):
        pids, deadline = set(), time.monotonic() + 60
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(_fresh("GET", f"{base}/healthz").json()["result"]["pid"])
        assert len(pids) == 2 and process.pid not in pids  # two workers, not the supervisor
        query = {"images": [REF0], "k": 1}
        for _ in range(6):
            reply = _fresh("POST", f"{base}/v1/indexes/idx/query", json=query)
            assert reply.status_code == 200 and reply.json()["result"][0]["matches"][0]["id"] == 0
        # A write through whichever worker takes it; every worker swaps to the new bundle.
        added = _fresh(
            "POST",
            f"{base}/v1/indexes/idx/add",
            json={"images": [REF0], "class": "7"},
            headers=AUTH,
        )
        assert added.status_code == 200, added.text
        agreed, deadline = 0, time.monotonic() + 60
        while agreed < 20 and time.monotonic() < deadline:
            info = _fresh("GET", f"{base}/v1/indexes/idx").json()["result"]
            agreed = agreed + 1 if info["generation"] == 2 and info["count"] == 301 else 0
        assert agreed == 20
        # /metrics adds up every worker's counts, whichever worker answers it.
        for _ in range(3):
            text = _fresh("GET", f"{base}/metrics").text
            queries = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("siamindex_requests_total{")
                and 'route="/v1/indexes/{name}/query"' in line
                and 'status="200"' in line
            ]
            assert queries == [6.0]
            assert 'siamindex_index_generation{index="idx"} 2.0' in text
