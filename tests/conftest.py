"""Fixtures shared by every tier: the MNIST copy, an isolated data directory, real servers."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from contracts.errors import DigitloopError
from model.data import CACHE_NAME, download_mnist
from model.settings import ModelSettings

REPO_ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent


# --- MNIST for the tests ---------------------------------------------------------------------
# The tests use the first copy that exists, in this order, and download only when none does:
#   1. DIGITLOOP_TEST_MNIST (set for the tests alone),
#   2. ../shared/data/mnist.npz (beside the clone; what offline CI uses),
#   3. the product's configured copy, DIGITLOOP_MNIST_PATH (ModelSettings().mnist_path),
#   4. the product's cache of an earlier download, <data dir>/mnist/mnist.npz (what
#      `make dev` or `digitloop train` left, or an earlier test run),
#   5. the product's checksummed download (model.data.download_mnist) into that cache, once.
# A path someone set (1 or 3) that does not exist stops the search: a typo never turns into a
# silent download of another copy.
SHARED_MNIST = Path("shared/data/mnist.npz")  # beside the clone


@dataclass(frozen=True)
class MnistCandidate:
    """One place MNIST may be: what it is (for messages), its path, and whether a person set it."""

    source: str
    path: Path
    explicit: bool = False


class MnistNotFound(Exception):
    """No copy of MNIST was found and none could be downloaded; the message says what was tried."""


def mnist_candidates(
    env: Mapping[str, str], settings: ModelSettings, repo_root: Path = REPO_ROOT
) -> tuple[list[MnistCandidate], Path]:
    """The places to look, in order, and the cache a download goes to (the last candidate)."""
    candidates = []
    if env.get("DIGITLOOP_TEST_MNIST"):
        candidates.append(
            MnistCandidate("DIGITLOOP_TEST_MNIST", Path(env["DIGITLOOP_TEST_MNIST"]), True)
        )
    candidates.append(
        MnistCandidate("the shared copy beside the clone", repo_root.parent / SHARED_MNIST)
    )
    if settings.mnist_path is not None:
        candidates.append(MnistCandidate("DIGITLOOP_MNIST_PATH", settings.mnist_path, True))
    cache = settings.mnist_cache_dir / CACHE_NAME
    if not cache.is_absolute():  # the data dir is relative to where `make` runs: the root
        cache = repo_root / cache
    candidates.append(MnistCandidate("the cache of an earlier download", cache))
    return candidates, cache


def find_mnist(candidates: Sequence[MnistCandidate]) -> Path | None:
    """The first candidate that exists, or ``None``; a missing path a person set is an error."""
    for candidate in candidates:
        if candidate.path.is_file():
            return candidate.path
        if candidate.explicit:
            raise MnistNotFound(
                f"MNIST copy not found at {candidate.path} ({candidate.source} is set): point "
                f"{candidate.source} at an existing mnist.npz, or unset it"
            )
    return None


def resolve_mnist(
    candidates: Sequence[MnistCandidate],
    cache: Path,
    base_url: str,
    checksums: dict[str, str] | None = None,
    announce: Callable[[str], None] = print,
) -> Path:
    """The first copy of MNIST that exists, else the product's checksummed download into
    ``cache`` (``checksums`` default to the official SHA-256s)."""
    found = find_mnist(candidates)
    if found is not None:
        return found
    tried = "".join(f"\n  - {c.source}: {c.path} (not found)" for c in candidates)
    announce(
        f"MNIST: no local copy found, downloading it once from {base_url} into {cache} "
        "(checksummed; later runs reuse it)"
    )
    try:
        return download_mnist(base_url, cache, checksums)
    except (DigitloopError, OSError) as exc:  # OSError: the cache cannot be written
        raise MnistNotFound(
            f"MNIST copy not found, and the download failed. Tried:{tried}\n"
            f"  - download from {base_url} into {cache}: {exc}\n"
            "Set DIGITLOOP_TEST_MNIST (or DIGITLOOP_MNIST_PATH) to a local mnist.npz with "
            "x_train, y_train, x_test, y_test, or run with network once."
        ) from exc


# Read once, when pytest starts, before any test changes the environment.
_MNIST_SETTINGS = ModelSettings()
MNIST_CANDIDATES, MNIST_CACHE = mnist_candidates(os.environ, _MNIST_SETTINGS)
# Where the tests' MNIST is: the first copy that exists, else where the download will put it.
# Tests that hand MNIST_PATH to a child process also use the `mnist_path` fixture (directly or
# through `mnist`), which makes it exist first.
try:
    _MNIST_FOUND, _MNIST_PROBLEM = find_mnist(MNIST_CANDIDATES), None
except MnistNotFound as exc:
    _MNIST_FOUND, _MNIST_PROBLEM = None, str(exc)  # the `mnist_path` fixture fails with it
MNIST_PATH = _MNIST_FOUND or MNIST_CACHE


def pytest_report_header(config: pytest.Config) -> str:
    if _MNIST_PROBLEM is not None:
        return f"mnist: {_MNIST_PROBLEM}"
    source = next((c.source for c in MNIST_CANDIDATES if c.path == _MNIST_FOUND), None)
    if source is not None:
        return f"mnist: {MNIST_PATH} ({source})"
    return f"mnist: no copy yet; downloaded into {MNIST_CACHE} when a test first needs it"


@pytest.fixture(scope="session")
def mnist_path(request: pytest.FixtureRequest) -> Path:
    config = request.config
    capture = config.pluginmanager.getplugin("capturemanager")
    reporter = config.pluginmanager.getplugin("terminalreporter")

    def announce(message: str) -> None:
        if reporter is not None:
            reporter.write_line(message, yellow=True)
        else:
            print(message, file=sys.stderr)

    # Capture off while resolving, so the message and the download's progress are seen.
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        try:
            return resolve_mnist(
                MNIST_CANDIDATES, MNIST_CACHE, _MNIST_SETTINGS.mnist_base_url, announce=announce
            )
        except MnistNotFound as exc:
            problem = str(exc)
    pytest.fail(problem, pytrace=False)  # outside the handler: the reason, not a traceback


@pytest.fixture(scope="session")
def mnist(mnist_path: Path):
    from model.data import load_mnist

    return load_mnist(mnist_path)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_path: Path) -> Path:
    """A fresh project data directory, with MNIST pointed at the tests' copy."""
    directory = tmp_path / "data"
    monkeypatch.setenv("DIGITLOOP_DATA_DIR", str(directory))
    monkeypatch.setenv("DIGITLOOP_MNIST_PATH", str(mnist_path))
    monkeypatch.delenv("DIGITLOOP_MLFLOW_TRACKING_URI", raising=False)
    return directory


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, timeout: float, process: subprocess.Popen | None = None) -> None:
    """Wait until ``url`` answers 2xx, failing early if ``process`` exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"process exited with {process.returncode} before {url} answered")
        try:
            if httpx.get(url, timeout=2).is_success:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} did not answer within {timeout}s")


def stop(process: subprocess.Popen, timeout: float = 15) -> None:
    """SIGTERM, ``timeout`` seconds, SIGKILL: the process, its group and every descendant
    (MLflow's job consumers, BentoML's workers), as ``digitloop dev`` stops its own."""
    from digitloop.stack import stop_tree

    stop_tree(process, grace=timeout)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``mlflow server`` on SQLite and a local artefact folder, on 127.0.0.1."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    log = (root / "server.log").open("w")
    process = subprocess.Popen(
        [
            str(VENV_BIN / "mlflow"),
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{root / 'mlflow.db'}",
            "--artifacts-destination",
            str(root / "artifacts"),
            "--workers",
            "1",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
        start_new_session=True,
        # No job runner: nothing here submits MLflow jobs, and its eight processes took about
        # half the server's start-up CPU (13 against 26-30 CPU-s measured on 2 cores).
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{url}/health", timeout=90, process=process)
        yield url
    finally:
        stop(process)
        log.close()


def tiny_split(mnist, n_train: int, n_test: int, seed: int = 0):
    """A small random training sample and a held-out sample of MNIST test."""
    rng = np.random.default_rng(seed)
    train_idx = rng.choice(len(mnist.x_train), n_train, replace=False)
    test_idx = rng.choice(len(mnist.x_test), n_test, replace=False)
    return (
        mnist.x_train[train_idx],
        mnist.y_train[train_idx].astype(np.int64),
        mnist.x_test[test_idx],
        mnist.y_test[test_idx].astype(np.int64),
    )


@pytest.fixture(scope="session")
def sketch_service(tmp_path_factory: pytest.TempPathFactory, mnist):
    """One served model for the UI and browser tests: trained with augmentation, so digits
    drawn with a mouse are recognised, on a local store the tests can read; registered with
    a novelty scorer, so its answers say when a drawing is unusual."""
    from tests.serving import Service, register_models

    root = tmp_path_factory.mktemp("sketch-service")
    env = {"DIGITLOOP_DATA_DIR": str(root / "data"), "DIGITLOOP_WORKERS": "1"}
    register_models(mnist, env, count=1, n_train=5000, epochs=2, augment=True, scored=1)
    service = Service(env, root / "serve.log").start()
    yield service
    service.stop()
