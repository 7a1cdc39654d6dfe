"""Fixtures shared by every tier: the MNIST copy, an isolated data directory, real servers."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
# Tests never download: they use the shared copy of MNIST (override for another checkout).
MNIST_PATH = Path(
    os.environ.get("DIGITLOOP_TEST_MNIST", REPO_ROOT.parent / "shared/data/mnist.npz")
)
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def mnist_path() -> Path:
    if not MNIST_PATH.exists():
        pytest.fail(f"MNIST copy not found at {MNIST_PATH}; set DIGITLOOP_TEST_MNIST")
    return MNIST_PATH


@pytest.fixture(scope="session")
def mnist(mnist_path: Path):
    from model.data import load_mnist

    return load_mnist(mnist_path)


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mnist_path: Path) -> Path:
    """A fresh project data directory, with MNIST pointed at the shared copy."""
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
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


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
    drawn with a mouse are recognised, on a local store the tests can read."""
    from tests.serving import Service, register_models

    root = tmp_path_factory.mktemp("sketch-service")
    env = {"DIGITLOOP_DATA_DIR": str(root / "data"), "DIGITLOOP_WORKERS": "1"}
    register_models(mnist, env, count=1, n_train=5000, epochs=2, augment=True)
    service = Service(env, root / "serve.log").start()
    yield service
    service.stop()
