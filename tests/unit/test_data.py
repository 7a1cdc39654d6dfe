"""MNIST loading: .npz validation, and the checksummed download against a loopback server."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from contracts.errors import ChecksumError, DatasetError, DownloadError
from model.data import (
    MNIST_FILES,
    download_mnist,
    load_labelled_npz,
    load_mnist,
)
from model.settings import ModelSettings


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(n).to_bytes(4, "big") for n in array.shape
    )
    return header + array.astype(np.uint8).tobytes()


@pytest.fixture
def mirror(tmp_path: Path, mnist) -> Iterator[tuple[str, dict[str, str], Path]]:
    """A loopback HTTP mirror serving a small MNIST in the official IDX .gz format."""
    root = tmp_path / "mirror"
    root.mkdir()
    arrays = {
        "train-images-idx3-ubyte.gz": mnist.x_train[:300],
        "train-labels-idx1-ubyte.gz": mnist.y_train[:300],
        "t10k-images-idx3-ubyte.gz": mnist.x_test[:100],
        "t10k-labels-idx1-ubyte.gz": mnist.y_test[:100],
    }
    checksums = {}
    for name, array in arrays.items():
        payload = gzip.compress(idx_bytes(array))
        (root / name).write_bytes(payload)
        checksums[name] = hashlib.sha256(payload).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", checksums, root
    finally:
        server.shutdown()
        server.server_close()


def test_official_checksum_table_names_the_four_files():
    assert sorted(MNIST_FILES) == sorted(
        [
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        ]
    )
    assert all(len(digest) == 64 for digest in MNIST_FILES.values())


def test_download_verifies_parses_and_caches(mirror, tmp_path: Path, mnist):
    url, checksums, _ = mirror
    cache = tmp_path / "cache" / "mnist.npz"
    download_mnist(url, cache, checksums)
    loaded = load_mnist(cache)
    np.testing.assert_array_equal(loaded.x_train, mnist.x_train[:300])
    np.testing.assert_array_equal(loaded.y_test, mnist.y_test[:100])


def test_corrupt_download_is_refused_and_not_cached(mirror, tmp_path: Path):
    url, checksums, root = mirror
    payload = (root / "t10k-images-idx3-ubyte.gz").read_bytes()
    (root / "t10k-images-idx3-ubyte.gz").write_bytes(payload[: len(payload) // 2])  # partial
    cache = tmp_path / "cache" / "mnist.npz"
    with pytest.raises(ChecksumError, match=r"t10k-images-idx3-ubyte\.gz.*not cached"):
        download_mnist(url, cache, checksums)
    assert not cache.exists()
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_unreachable_mirror_is_a_clear_error(tmp_path: Path):
    with pytest.raises(DownloadError, match="DIGITLOOP_MNIST_PATH"):
        download_mnist("http://127.0.0.1:9/", tmp_path / "mnist.npz")


def test_load_mnist_downloads_once_into_the_data_dir(mirror, tmp_path: Path, monkeypatch):
    url, checksums, root = mirror
    monkeypatch.setattr("model.data.MNIST_FILES", checksums)
    settings = ModelSettings(data_dir=tmp_path / "data", mnist_base_url=url, mnist_path=None)
    first = load_mnist(settings=settings)
    for name in checksums:  # the mirror goes away: the cache must serve the second load
        (root / name).unlink()
    second = load_mnist(settings=settings)
    np.testing.assert_array_equal(first.x_train, second.x_train)
    assert (tmp_path / "data" / "mnist" / "mnist.npz").exists()


def test_configured_path_wins_and_nothing_downloads(mnist_path: Path, tmp_path: Path):
    settings = ModelSettings(
        data_dir=tmp_path, mnist_path=mnist_path, mnist_base_url="http://127.0.0.1:9/"
    )
    data = load_mnist(settings=settings)
    assert data.x_train.shape == (60000, 28, 28) and data.x_test.shape == (10000, 28, 28)
    assert not (tmp_path / "mnist").exists()


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"x": np.zeros((2, 28, 28), np.uint8)}, "missing key"),
        ({"x": np.zeros((2, 28, 27), np.uint8), "y": np.zeros(2, np.int64)}, "shape"),
        ({"x": np.zeros((2, 28, 28), np.float32), "y": np.zeros(2, np.int64)}, "dtype"),
        ({"x": np.zeros((2, 28, 28), np.uint8), "y": np.zeros(3, np.int64)}, "y has shape"),
        ({"x": np.zeros((2, 28, 28), np.uint8), "y": np.array([0, 10])}, "labels must be 0-9"),
        ({"x": np.zeros((2, 28, 28), np.uint8), "y": np.array([0.0, 1.0])}, "integer labels"),
    ],
)
def test_bad_labelled_files_are_refused_with_the_reason(tmp_path: Path, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays)
    with pytest.raises(DatasetError, match=message):
        load_labelled_npz(path)


def test_a_file_that_is_not_npz_is_refused(tmp_path: Path):
    path = tmp_path / "bad.npz"
    path.write_text("hello")
    with pytest.raises(DatasetError, match=r"not a readable \.npz"):
        load_labelled_npz(path)


def test_valid_labelled_file_loads(tmp_path: Path, mnist):
    path = tmp_path / "ok.npz"
    np.savez(path, x=mnist.x_test[:10], y=mnist.y_test[:10])
    x, y = load_labelled_npz(path)
    assert x.shape == (10, 28, 28) and y.dtype == np.int64


def test_a_single_npy_array_is_refused(tmp_path: Path):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetError, match=r"not an \.npz archive"):
        load_labelled_npz(path)
