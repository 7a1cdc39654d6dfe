"""Where the tests find MNIST (tests/conftest.py): the copies in order, else one download.

The download is the product's own (``model.data.download_mnist``, checksummed), here served by
a loopback HTTP server from a tiny synthetic MNIST in the official IDX ``.gz`` format, so this
needs no network and no real MNIST.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

from model.data import CACHE_NAME, load_mnist
from model.settings import ModelSettings
from tests.conftest import (
    MNIST_PATH,
    MnistCandidate,
    MnistNotFound,
    mnist_candidates,
    resolve_mnist,
)

FILES = {
    "train-images-idx3-ubyte.gz": "x_train",
    "train-labels-idx1-ubyte.gz": "y_train",
    "t10k-images-idx3-ubyte.gz": "x_test",
    "t10k-labels-idx1-ubyte.gz": "y_test",
}


def idx(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes: magic 0x00 0x00 0x08 <ndim>, one uint32 per dimension."""
    header = bytes([0, 0, 0x08, array.ndim])
    header += b"".join(int(n).to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def tiny_mnist(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "x_train": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "y_train": np.arange(12, dtype=np.uint8) % 10,
        "x_test": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "y_test": np.arange(6, dtype=np.uint8) % 10,
    }


@dataclass
class Mirror:
    url: str
    checksums: dict[str, str]
    arrays: dict[str, np.ndarray]
    requests: list[str] = field(default_factory=list)


@pytest.fixture
def mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Mirror]:
    """The four MNIST files, gzip'd IDX, on a loopback HTTP server that counts requests."""
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")  # never through a proxy, if one is set
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    root = tmp_path / "mirror"
    root.mkdir()
    arrays = tiny_mnist()
    checksums = {}
    for name, key in FILES.items():
        payload = gzip.compress(idx(arrays[key]))
        (root / name).write_bytes(payload)
        checksums[name] = hashlib.sha256(payload).hexdigest()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(Handler, directory=str(root))
    )
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield Mirror(f"http://127.0.0.1:{server.server_address[1]}/", checksums, arrays, requests)
    finally:
        server.shutdown()
        server.server_close()


def candidates_without_copies(tmp_path: Path) -> tuple[list[MnistCandidate], Path]:
    """A fresh clone: no shared copy, nothing configured, an empty data directory."""
    settings = ModelSettings(data_dir=tmp_path / "data", mnist_path=None)
    return mnist_candidates({}, settings, repo_root=tmp_path / "clone")


def test_candidates_are_in_order_and_the_cache_is_the_products(tmp_path: Path):
    settings = ModelSettings(data_dir=Path(".digitloop"), mnist_path=tmp_path / "configured.npz")
    env = {"DIGITLOOP_TEST_MNIST": str(tmp_path / "test.npz")}
    candidates, cache = mnist_candidates(env, settings, repo_root=tmp_path / "clone")
    assert [(c.source, c.path, c.explicit) for c in candidates] == [
        ("DIGITLOOP_TEST_MNIST", tmp_path / "test.npz", True),
        ("the shared copy beside the clone", tmp_path / "shared/data/mnist.npz", False),
        ("DIGITLOOP_MNIST_PATH", tmp_path / "configured.npz", True),
        ("the cache of an earlier download", cache, False),
    ]
    # The product's cache (<data dir>/mnist/mnist.npz), a relative data dir taken from the root.
    assert cache == tmp_path / "clone" / settings.mnist_cache_dir / CACHE_NAME
    assert cache == tmp_path / "clone/.digitloop/mnist/mnist.npz"


def test_unset_variables_are_not_candidates(tmp_path: Path):
    candidates, cache = candidates_without_copies(tmp_path)
    assert [c.source for c in candidates] == [
        "the shared copy beside the clone",
        "the cache of an earlier download",
    ]
    assert cache == tmp_path / "data/mnist/mnist.npz"


def test_the_first_copy_that_exists_wins_and_nothing_downloads(tmp_path: Path):
    copies = [tmp_path / name for name in ("a.npz", "b.npz", "c.npz")]
    for path in copies[1:]:
        path.write_bytes(b"x")
    candidates = [MnistCandidate(path.name, path) for path in copies]
    unreachable = "http://127.0.0.1:9/"  # would fail at once if anything tried to download
    assert resolve_mnist(candidates, tmp_path / "cache.npz", unreachable) == copies[1]


def test_a_path_someone_set_that_is_missing_stops_the_search(tmp_path: Path, mirror: Mirror):
    shared = tmp_path / "shared.npz"
    shared.write_bytes(b"x")
    candidates = [
        MnistCandidate("DIGITLOOP_TEST_MNIST", tmp_path / "typo.npz", explicit=True),
        MnistCandidate("the shared copy beside the clone", shared),
    ]
    with pytest.raises(MnistNotFound, match=r"typo\.npz \(DIGITLOOP_TEST_MNIST is set\)"):
        resolve_mnist(candidates, tmp_path / "cache.npz", mirror.url, mirror.checksums)
    assert mirror.requests == []


def test_no_copy_downloads_once_into_the_cache_then_reuses_it(tmp_path: Path, mirror: Mirror):
    candidates, cache = candidates_without_copies(tmp_path)
    said: list[str] = []

    first = resolve_mnist(candidates, cache, mirror.url, mirror.checksums, announce=said.append)

    assert first == cache and cache.is_file()
    assert sorted(mirror.requests) == sorted(f"/{name}" for name in FILES)  # 4 requests
    assert len(said) == 1 and "downloading it once" in said[0] and str(cache) in said[0]
    loaded = load_mnist(cache)
    for key, array in mirror.arrays.items():
        np.testing.assert_array_equal(getattr(loaded, key), array)

    second = resolve_mnist(candidates, cache, mirror.url, mirror.checksums, announce=said.append)

    assert second == cache
    assert len(mirror.requests) == 4  # no second request: the cache served it
    assert len(said) == 1  # and nothing announced a download


def test_a_wrong_checksum_fails_clearly_and_caches_nothing(tmp_path: Path, mirror: Mirror):
    candidates, cache = candidates_without_copies(tmp_path)
    checksums = {**mirror.checksums, "t10k-labels-idx1-ubyte.gz": "0" * 64}

    with pytest.raises(MnistNotFound) as failure:
        resolve_mnist(candidates, cache, mirror.url, checksums, announce=lambda _: None)

    message = str(failure.value)
    assert "MNIST copy not found, and the download failed. Tried:" in message
    for candidate in candidates:  # every place looked at, then the download and why it failed
        assert f"{candidate.source}: {candidate.path} (not found)" in message
    assert f"download from {mirror.url} into {cache}" in message
    assert "t10k-labels-idx1-ubyte.gz" in message and "expected " + "0" * 64 in message
    assert "DIGITLOOP_TEST_MNIST" in message
    assert not cache.exists()
    assert not cache.parent.exists() or not any(cache.parent.iterdir())  # no partial file


def test_an_unreachable_mirror_fails_clearly(tmp_path: Path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    candidates, cache = candidates_without_copies(tmp_path)
    with pytest.raises(MnistNotFound, match=r"(?s)Tried:.*could not download"):
        resolve_mnist(candidates, cache, url, announce=lambda _: None)
    assert not cache.exists()


def test_the_fixture_gives_the_path_child_processes_are_given(mnist_path: Path):
    # Tests hand MNIST_PATH to child processes (DIGITLOOP_MNIST_PATH): it must be the copy the
    # fixture found or downloaded.
    assert mnist_path == MNIST_PATH and mnist_path.is_file()
