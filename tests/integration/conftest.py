"""Real servers for the integration tier: an S3 API on loopback."""

from __future__ import annotations

import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import VENV_BIN, free_port, stop, wait_http


class S3Server:
    """moto's S3 server as a child process on 127.0.0.1, standing in for MinIO.

    ``stop()`` and ``start()`` simulate an outage; the server comes back on the same port
    and, like a MinIO whose volume was lost, empty. ``pause()`` and ``resume()`` simulate a
    server that hangs instead.
    """

    access_key = "digitloop-test"
    secret_key = "digitloop-test-secret"

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.process: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.endpoint}"

    def start(self) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        # moto's own API answers 200 once the server takes requests.
        try:
            wait_http(f"{self.url}/moto-api/", timeout=30, process=self.process)
        except BaseException:  # not up: nobody will stop it but us
            stop(self.process)
            raise

    def stop(self) -> None:
        if self.process is not None:
            self.resume()
            stop(self.process)

    def pause(self) -> None:
        """Freeze the server: connections are still accepted, but nothing answers."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)


@pytest.fixture
def s3_server(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "moto.log")
    server.start()
    try:
        yield server
    finally:
        server.stop()
