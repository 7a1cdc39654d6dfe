"""The embedded stack on one machine: MLflow server, prediction service, sketchpad UI.

Used by ``digitloop dev`` (everything, until Ctrl-C) and ``digitloop simulate`` (a
stack of its own for one run). Every process listens on 127.0.0.1, runs in its own
process group, and is stopped in reverse order, SIGTERM first.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console

BIN = Path(sys.executable).parent


@dataclass
class StackConfig:
    data_dir: Path = Path(".digitloop")
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    serve_port: int = 3000
    ui_port: int = 7860
    workers: int = 2
    with_ui: bool = True
    train_epochs: int = 8


@dataclass
class EmbeddedStack(AbstractContextManager):
    config: StackConfig
    console: Console = field(default_factory=lambda: Console(stderr=True))
    processes: list[tuple[str, subprocess.Popen]] = field(default_factory=list)
    _saved_environ: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.config.host}:{self.config.mlflow_port}"

    @property
    def service_url(self) -> str:
        return f"http://{self.config.host}:{self.config.serve_port}"

    @property
    def ui_url(self) -> str:
        return f"http://{self.config.host}:{self.config.ui_port}"

    def env(self) -> dict[str, str]:
        """The settings every component of this stack shares."""
        data_dir = self.config.data_dir.resolve()
        return {
            "DIGITLOOP_DATA_DIR": str(data_dir),
            "DIGITLOOP_MLFLOW_TRACKING_URI": self.mlflow_url,
            "DIGITLOOP_SERVICE_URL": self.service_url,
            "DIGITLOOP_ADMIN_TOKEN": admin_token(data_dir),
            "DIGITLOOP_WORKERS": str(self.config.workers),
            "OMP_NUM_THREADS": "1",
            "BENTOML_DO_NOT_TRACK": "True",
            "GRADIO_ANALYTICS_ENABLED": "False",
        }

    def __enter__(self) -> EmbeddedStack:
        self._saved_environ = dict(os.environ)
        os.environ.update(self.env())  # this process (loop, simulator) shares them too
        logs = self.config.data_dir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        try:
            db = (self.config.data_dir / "mlflow.db").resolve()
            self._start(
                "mlflow",
                [
                    str(BIN / "mlflow"),
                    "server",
                    "--host",
                    self.config.host,
                    "--port",
                    str(self.config.mlflow_port),
                    "--backend-store-uri",
                    f"sqlite:///{db}",
                    "--default-artifact-root",
                    (self.config.data_dir / "mlartifacts").resolve().as_uri(),
                    "--workers",
                    "1",
                ],
                f"{self.mlflow_url}/health",
                logs,
            )
            self._ensure_model()
            self._start(
                "serving",
                [
                    str(BIN / "digitloop"),
                    "serve",
                    "--host",
                    self.config.host,
                    "--port",
                    str(self.config.serve_port),
                    "--workers",
                    str(self.config.workers),
                    *self._canary_args(),
                ],
                f"{self.service_url}/readyz",
                logs,
            )
            if self.config.with_ui:
                self._start(
                    "ui",
                    [
                        str(BIN / "digitloop"),
                        "ui",
                        "--host",
                        self.config.host,
                        "--port",
                        str(self.config.ui_port),
                    ],
                    f"{self.ui_url}/",
                    logs,
                )
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
        os.environ.clear()
        os.environ.update(self._saved_environ)

    def _start(
        self, name: str, command: list[str], ready_url: str, logs: Path, timeout: float = 180
    ) -> None:
        log = (logs / f"{name}.log").open("a")
        process = subprocess.Popen(
            command,
            env={**os.environ, **self.env()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes.append((name, process))
        deadline = time.monotonic() + timeout
        with self.console.status(f"starting {name}..."):
            while time.monotonic() < deadline:
                if process.poll() is not None:
                    raise RuntimeError(
                        f"{name} exited with {process.returncode}; see {logs / f'{name}.log'}"
                    )
                try:
                    if httpx.get(ready_url, timeout=2).is_success:
                        self.console.print(f"[green]{name}[/] ready")
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.5)
        raise TimeoutError(f"{name} not ready after {timeout:.0f}s; see {logs / f'{name}.log'}")

    def _ensure_model(self) -> None:
        """Train version 1 when the registry is empty (about 3 minutes on 2 cores)."""
        from model.registry import Registry

        if Registry().versions():
            return
        self.console.print("the registry is empty: training version 1")
        from model.cli import train

        train(
            epochs=self.config.train_epochs,
            limit=None,
            batch_size=128,
            seed=42,
            no_augment=False,
            mnist=None,
            as_json=False,
            verbose=False,
        )

    def _canary_args(self) -> list[str]:
        """Serve the challenger as the canary when one is set: a restart keeps the canary."""
        from model.registry import Registry
        from model.settings import CHALLENGER_ALIAS
        from pipelines.settings import DecisionSettings

        if Registry().alias_version(CHALLENGER_ALIAS) is None:
            return []
        return [
            "--canary-model",
            CHALLENGER_ALIAS,
            "--canary-weight",
            str(DecisionSettings().new_canary_weight),
        ]

    def stop(self) -> None:
        for name, process in reversed(self.processes):
            if process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGTERM)
                    process.wait(timeout=30)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    kill(process)
            self.console.print(f"[dim]{name} stopped[/]")
        self.processes.clear()


def kill(process: subprocess.Popen) -> None:
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def admin_token(data_dir: Path) -> str:
    """The admin token: DIGITLOOP_ADMIN_TOKEN, else one made once in the data directory."""
    if token := os.environ.get("DIGITLOOP_ADMIN_TOKEN"):
        return token
    path = data_dir / "admin.token"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.write_text(secrets.token_urlsafe(24))
    return path.read_text().strip()
