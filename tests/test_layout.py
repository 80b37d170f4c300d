"""The package's shape: which module may import which, and a test file for every module.

The README's development section shows the same map; change both together.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "siamindex"

# module -> the siamindex modules it may import (at module level or inside functions).
ALLOWED = {
    "errors": set(),
    "version": set(),
    "metrics": set(),
    "search": set(),
    "blas": set(),
    "corruptions": {"errors"},
    "outliers": {"errors", "prepare"},
    "exposure": {"outliers", "prepare"},
    "augment": set(),  # Keras preprocessing layers: imported by training only
    "prepare": {"defaults", "errors"},
    "defaults": {"errors"},
    "facts": {"defaults"},
    "augmented": {"errors"},
    "data": {"augmented", "errors", "prepare", "shardfiles"},  # shardfiles lazily
    "shardfiles": {"augmented", "data", "errors"},
    "inputs": {"data", "errors", "prepare"},
    "pairs": {"defaults"},
    "model": {"defaults", "errors"},  # TensorFlow lives here and in training
    "training": {
        "augment",
        "data",
        "defaults",
        "evaluation",
        "exposure",
        "metrics",
        "model",
        "pairs",
    },
    "embedding": {"defaults", "model"},  # model only inside load_embedder
    "evaluation": {"data", "defaults", "metrics", "pairs", "search"},
    "bundle": {"data", "defaults", "errors"},
    "metadata": {"bundle", "facts"},
    "graphs": {"bundle", "errors"},
    "store": {"bundle", "errors", "facts", "graphs", "metadata", "search"},
    "shards": {"augmented", "data", "errors", "exposure", "shardfiles", "store"},
    "cluster": {"build", "bulk", "embedding", "errors", "shards"},  # Ray lives here only
    "bulk": {"cluster", "errors", "index", "inputs", "query"},
    "scale": {
        "augmented",
        "build",
        "bundle",
        "cluster",
        "embedding",
        "graphs",
        "errors",
        "index",
        "metadata",
        "shards",
        "store",
    },
    "query": {"metrics", "search", "store", "vote"},
    "vote": {"defaults", "search", "store"},
    "curation": {"defaults", "errors", "evaluation", "query", "search", "store"},
    "index": {
        "blas",
        "bundle",
        "curation",
        "data",
        "defaults",
        "embedding",
        "errors",
        "facts",
        "query",
        "search",
        "store",
    },
    "build": {
        "augmented",
        "bundle",
        "data",
        "defaults",
        "embedding",
        "errors",
        "evaluation",
        "exposure",
        "facts",
        "index",
        "store",
        "version",
    },
    "report": {"data", "defaults", "errors", "evaluation", "metrics", "pairs", "store"},
    "batcher": set(),
    "service": {"batcher", "bundle", "data", "embedding", "errors", "index", "inputs", "prepare"},
    "api_support": {"data", "errors", "index", "service", "version"},
    "api": {"api_support", "curation", "errors", "query", "service"},
    "cli": {
        "api",
        "api_support",
        "blas",
        "build",
        "bulk",
        "bundle",
        "curation",
        "data",
        "defaults",
        "embedding",
        "errors",
        "evaluation",
        "index",
        "inputs",
        "query",
        "report",
        "scale",
        "service",
        "training",
    },
    "__init__": {"blas", "build", "errors", "facts", "index", "query", "version"},
    "__main__": {"cli"},
}


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("siamindex"):
            parts = (node.module or "").split(".")
            found |= {parts[1]} if len(parts) > 1 else {alias.name for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.split(".")[1] for a in node.names if a.name.startswith("siamindex.")}
    return found - {path.stem}


MODULES = sorted(p.stem for p in PACKAGE.glob("*.py"))


def test_every_module_is_in_the_map():
    assert set(MODULES) == set(ALLOWED)


@pytest.mark.parametrize("module", MODULES)
def test_imports_follow_the_map(module):
    extra = _imports(PACKAGE / f"{module}.py") - ALLOWED[module]
    assert not extra, f"{module} imports {sorted(extra)}; see the README's module map"


@pytest.mark.parametrize("module", [m for m in MODULES if not m.startswith("__")])
def test_every_module_has_its_test_file(module):
    assert (Path(__file__).parent / f"test_{module}.py").is_file()


def test_no_module_outside_the_cli_passes_450_lines():
    sizes = {m: len((PACKAGE / f"{m}.py").read_text().splitlines()) for m in MODULES}
    assert {m: n for m, n in sizes.items() if n > 460 and m != "cli"} == {}
