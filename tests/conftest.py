"""Shared fixtures. Tests run on CPU, on small slices of the real MNIST files."""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

os.environ.setdefault("CUDA_VISIBLE_DEVICES", "-1")  # hide any GPU: same results everywhere
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from fakes import FakeEncoder, fake_encoder_file  # noqa: E402

from siamindex.data import Dataset, load_dataset  # noqa: E402


def write_idx(path: Path, array: np.ndarray, compress: bool = True, type_code: int = 0x08) -> Path:
    """Write ``array`` as an IDX file (gzipped if ``compress``)."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    raw = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_idx_dataset(folder: Path, train: Dataset, test: Dataset) -> Path:
    """Write two splits as the four MNIST-named IDX files in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, split in (("train", train), ("t10k", test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte.gz", split.images)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", split.labels.astype(np.uint8))
    return folder


@pytest.fixture(scope="session")
def mnist_train() -> Dataset:
    return load_dataset(split="train")


@pytest.fixture(scope="session")
def mnist_test() -> Dataset:
    return load_dataset(split="test")


@pytest.fixture(scope="session")
def small_idx_dir(
    tmp_path_factory: pytest.TempPathFactory, mnist_train: Dataset, mnist_test: Dataset
) -> Path:
    """A data folder of 1,000 train and 300 test MNIST images in IDX form."""
    folder = tmp_path_factory.mktemp("small-mnist")
    return write_idx_dataset(
        folder, mnist_train.subset(slice(0, 1000)), mnist_test.subset(slice(0, 300))
    )


@pytest.fixture(scope="session")
def fake_encoder() -> FakeEncoder:
    return FakeEncoder(embedding_dim=8)


@pytest.fixture(scope="session")
def fake_bundle(
    tmp_path_factory: pytest.TempPathFactory, small_idx_dir: Path, fake_encoder
) -> Path:
    """An index of the small MNIST folder (1,000 train + 300 test) built once with the fake
    encoder; tests copy it (``fake_index``) rather than build their own."""
    from siamindex.build import BuildSettings, build_index

    folder = tmp_path_factory.mktemp("fake-bundle")
    settings = BuildSettings(
        encoder=fake_encoder_file(folder),
        index=folder / "idx",
        data_dir=small_idx_dir,
        progress=False,
    )
    index, _ = build_index(settings, embed=fake_encoder)
    return index.path


@pytest.fixture
def fake_index(tmp_path: Path, fake_bundle: Path, fake_encoder):
    """A private copy of the fake-encoder index (as the name link plus its bundle folder)."""
    import shutil

    from siamindex.index import Index

    target = tmp_path / "idx"
    bundle = fake_bundle.resolve()
    shutil.copytree(bundle, tmp_path / bundle.name)
    target.symlink_to(bundle.name)
    return Index.open(target, embed=fake_encoder)


TINY_ENCODER = Path(__file__).parent / "data" / "bundle-0.1.0" / "encoder.keras"


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory, small_idx_dir: Path) -> Path:
    """An index of the 300 small test images built once with the tiny real (Keras) encoder;
    tests that change it take ``tiny_index`` (a private copy)."""
    from siamindex.build import BuildSettings, build_index

    path = tmp_path_factory.mktemp("tiny-bundle") / "idx"
    settings = BuildSettings(
        encoder=TINY_ENCODER, index=path, data_dir=small_idx_dir, splits=("test",), progress=False
    )
    build_index(settings)
    return path


@pytest.fixture(scope="session")
def tiny_train_bundles(tmp_path_factory: pytest.TempPathFactory, small_idx_dir: Path) -> dict:
    """The 1,000 small train images indexed with the tiny real encoder, built once as "flat" and
    as "hnsw" (HNSW8, with its class graphs), for tests that only read them."""
    from dataclasses import replace

    from siamindex.build import BuildSettings, build_index

    folder = tmp_path_factory.mktemp("tiny-train")
    settings = BuildSettings(
        encoder=TINY_ENCODER, index=folder / "flat", data_dir=small_idx_dir, splits=("train",),
        progress=False,
    )  # fmt: skip
    build_index(settings)
    build_index(replace(settings, index=folder / "hnsw", index_type="HNSW8"))
    return {"flat": folder / "flat", "hnsw": folder / "hnsw"}


@pytest.fixture
def tiny_index(tiny_bundle: Path, tmp_path: Path) -> Path:
    """A private copy of ``tiny_bundle`` (the name link plus its bundle folder): its path."""
    import shutil

    folder = tiny_bundle.resolve()
    shutil.copytree(folder, tmp_path / folder.name)
    (tmp_path / "idx").symlink_to(folder.name)
    return tmp_path / "idx"


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster of 2 CPUs, started once per test session (the Ray engine joins it)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield ray
    ray.shutdown()


def chromium_or_skip() -> str:
    """Debian's chromium for the browser tests: skipped where it is missing, but a failure in CI
    (CI=true), so that a missing install step cannot pass unseen."""
    import shutil

    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "Debian's chromium is not installed: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return found


def brute_force(stored: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(distances, rows) of the k nearest stored rows of each query, by NumPy."""
    distances = np.linalg.norm(queries[:, None, :] - stored[None, :, :], axis=2)
    order = np.argsort(distances, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(distances, order, axis=1), order


@pytest.fixture
def vectors() -> tuple[np.ndarray, np.ndarray]:
    """(200, 16) stored and (50, 16) query float32 vectors, seeded."""
    rng = np.random.default_rng(0)
    stored = rng.normal(size=(200, 16)).astype(np.float32)
    return stored, rng.normal(size=(50, 16)).astype(np.float32)
