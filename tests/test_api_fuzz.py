"""The API fuzzed from its own OpenAPI schema (Schemathesis) against a real ``siamindex serve``
without a token: requests generated from the schema (and the invalid ones Schemathesis derives
from it, other methods included) never get a 5xx, errors are one-line envelopes, and the index
files stay byte-identical."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from serving import running_server


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle):
    """A private copy of the session's tiny bundle, served."""
    import shutil

    folder = tmp_path_factory.mktemp("fuzz")
    bundle = tiny_bundle.resolve()
    shutil.copytree(bundle, folder / bundle.name)
    (folder / "idx").symlink_to(bundle.name)
    before = _digest(folder / "idx")
    with running_server(folder / "idx") as (_, base):  # no token: every write must be refused
        yield base
    assert _digest(folder / "idx") == before, "the fuzzing changed the index"
    assert not [p for p in folder.iterdir() if p.name.endswith(".partial")]


def _digest(path: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in path.resolve().iterdir()}


@pytest.fixture(scope="module")
def api_schema(served):
    return schemathesis.openapi.from_url(f"{served}/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_request_gets_a_server_error(case):
    response = case.call(timeout=30)
    assert response.status_code < 500, (case.method, case.path, response.text[:300])
    content_type = response.headers.get("content-type") or [""]  # Schemathesis: header lists
    is_json = str(content_type[0]).startswith("application/json")
    if response.status_code >= 400 and is_json:
        body = response.json()
        assert set(body) == {"error"} and "\n" not in body["error"]
    if case.path.endswith(("/add", "/remove")):  # no token here: never a write
        assert 400 <= response.status_code < 500, response.text[:200]
