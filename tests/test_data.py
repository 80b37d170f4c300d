from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import write_idx
from PIL import Image

from siamindex.data import bundled_mnist_dir, load_dataset, load_image_file, parse_idx, read_idx
from siamindex.errors import DataError


def test_bundled_mnist_has_the_canonical_shapes(mnist_train, mnist_test):
    assert mnist_train.images.shape == (60_000, 28, 28)
    assert mnist_train.images.dtype == np.uint8
    assert mnist_test.images.shape == (10_000, 28, 28)
    assert mnist_train.labels.dtype == np.int64
    assert set(np.unique(mnist_train.labels)) == set(range(10))
    # Known first labels of MNIST: 5 0 4 1 9 (train) and 7 2 1 0 4 (test).
    assert list(mnist_train.labels[:5]) == [5, 0, 4, 1, 9]
    assert list(mnist_test.labels[:5]) == [7, 2, 1, 0, 4]
    assert mnist_train.class_names == tuple("0123456789")


def test_idx_round_trip_gzipped_and_plain(tmp_path):
    array = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    for compress in (True, False):
        path = write_idx(tmp_path / f"x{compress}", array, compress=compress)
        np.testing.assert_array_equal(read_idx(path), array)


def test_idx_reads_wider_integer_types(tmp_path):
    array = np.arange(12, dtype=np.int32).reshape(3, 4) - 5
    path = write_idx(tmp_path / "ints", array.astype(">i4"), type_code=0x0C)
    np.testing.assert_array_equal(read_idx(path), array)


@pytest.mark.parametrize(
    "raw, message",
    [
        (b"", "bad magic number"),
        (b"\x00\x00\x08", "bad magic number"),
        (b"\x01\x02\x08\x03" + b"\x00" * 20, "bad magic number"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01\x00", "bad magic number"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "is truncated"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "longer than its header says"),
    ],
)
def test_malformed_idx_bytes_are_rejected(raw, message):
    with pytest.raises(DataError, match=message):
        parse_idx(raw)


def test_corrupt_gzip_is_a_data_error(tmp_path):
    path = tmp_path / "bad.gz"
    good = gzip.compress(b"\x00\x00\x08\x01\x00\x00\x00\x04abcd")
    path.write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="not readable gzip"):
        read_idx(path)


def test_idx_folder_with_mismatched_counts(tmp_path, mnist_train):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", mnist_train.images[:10])
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", mnist_train.labels[:9].astype(np.uint8))
    with pytest.raises(DataError, match="10 images but 9 labels"):
        load_dataset(tmp_path, "train")


def test_idx_folder_with_wrong_image_size(tmp_path):
    write_idx(tmp_path / "train-images-idx3-ubyte.gz", np.zeros((4, 32, 32), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match=r"\(4, 32, 32\); expected \(n, 28, 28\)"):
        load_dataset(tmp_path, "train")


def test_damaged_checksummed_file_is_detected(tmp_path):
    folder = tmp_path / "mnist"
    shutil.copytree(bundled_mnist_dir(), folder)
    target = folder / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.chmod(0o644)
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match="does not match its SHA-256"):
        load_dataset(folder, "test")
    # The undamaged split of the same folder still loads.
    assert len(load_dataset(folder, "train")) == 60_000


def test_idx_folder_loads(small_idx_dir, mnist_train):
    train = load_dataset(small_idx_dir, "train")
    assert len(train) == 1000
    np.testing.assert_array_equal(train.images, mnist_train.images[:1000])
    assert train.source == str(small_idx_dir.resolve())


def _write_png_folder(root: Path, dataset, count: int) -> None:
    for i in range(count):
        folder = root / dataset.class_names[dataset.labels[i]]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(dataset.images[i]).save(folder / f"{i:05d}.png")


def test_class_folder_dataset(tmp_path, mnist_test):
    _write_png_folder(tmp_path / "train", mnist_test, 40)
    _write_png_folder(tmp_path / "test", mnist_test.subset(slice(40, 60)), 20)
    train = load_dataset(tmp_path, "train")
    assert len(train) == 40
    assert train.class_names == tuple(sorted({str(v) for v in mnist_test.labels[:40]}))
    # Each decoded image equals the original array (PNG is lossless), under its class.
    pairs = zip(train.images, train.labels, strict=True)
    got = sorted((train.class_names[c], image.tobytes()) for image, c in pairs)
    originals = zip(mnist_test.images[:40], mnist_test.labels[:40], strict=True)
    want = sorted((str(c), image.tobytes()) for image, c in originals)
    assert got == want
    assert len(load_dataset(tmp_path, "test")) == 20


def test_flat_class_folder_is_the_train_split(tmp_path, mnist_test):
    _write_png_folder(tmp_path, mnist_test, 12)
    assert len(load_dataset(tmp_path, "train")) == 12
    with pytest.raises(DataError, match="used as the train split"):
        load_dataset(tmp_path, "test")


def test_image_conversion_rule(tmp_path):
    rgb = np.zeros((28, 28, 3), np.uint8)
    rgb[..., 0] = 255  # pure red -> luma 76
    Image.fromarray(rgb).save(tmp_path / "red.png")
    assert load_image_file(tmp_path / "red.png")[0, 0] == 76
    Image.fromarray(np.full((56, 40), 200, np.uint8)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match="is 40x56; expected 28x28. Pass --prepare mnist"):
        load_image_file(tmp_path / "big.png")
    resized = load_image_file(tmp_path / "big.png", resize=True)
    assert resized.shape == (28, 28) and resized[10, 10] == 200


def test_garbage_image_file(tmp_path):
    (tmp_path / "junk.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    with pytest.raises(DataError, match="not a readable PNG/JPEG"):
        load_image_file(tmp_path / "junk.jpg")


def test_missing_data_folder():
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("/nonexistent/folder", "train")


def test_parse_classes_reads_names_and_ranges_in_the_dataset_order():
    from siamindex.data import parse_classes

    digits = [str(d) for d in range(10)]
    assert parse_classes("0-5", digits) == ("0", "1", "2", "3", "4", "5")
    assert parse_classes("7, 2,0-1,2", digits) == ("0", "1", "2", "7")
    assert parse_classes("t-shirt,bag", ["t-shirt", "bag", "coat"]) == ("t-shirt", "bag")
    for text, message in [
        ("0-12", "Unknown class '12' in '0-12'"),
        ("cat", "Unknown class 'cat'"),
        ("5-2", "Range '5-2' runs backwards; write it as 2-5"),
        (" , ", "No class named"),
    ]:
        with pytest.raises(DataError, match=message):
            parse_classes(text, digits)


def test_balanced_sample_spreads_over_the_classes_seeded(mnist_train):
    from siamindex.data import balanced_sample, only_classes

    picked = balanced_sample(mnist_train, 105, np.random.default_rng(3))
    counts = np.bincount(picked.labels, minlength=10)
    assert counts.sum() == 105 and set(counts) == {10, 11}
    assert np.all(np.diff(picked.source_index) > 0)  # file order, no repeats
    again = balanced_sample(mnist_train, 105, np.random.default_rng(3))
    np.testing.assert_array_equal(picked.source_index, again.source_index)
    # A class that runs out leaves its share to the others.
    few = only_classes(mnist_train.subset(slice(0, 2000)), ["0", "1"])
    small = few.subset(
        np.concatenate([np.flatnonzero(few.labels == 0)[:3], np.flatnonzero(few.labels == 1)])
    )
    taken = balanced_sample(small, 20, np.random.default_rng(0))
    assert np.bincount(taken.labels, minlength=2)[:2].tolist() == [3, 17]
    with pytest.raises(DataError, match="Asked for 99999 images"):
        balanced_sample(small, 99999, np.random.default_rng(0))
