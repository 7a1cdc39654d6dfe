"""Start the real prediction service for tests: registered models and `bentoml serve`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import numpy as np

from digitloop.stack import stop_tree
from tests.conftest import MNIST_PATH, REPO_ROOT, VENV_BIN, free_port, tiny_split, wait_http

if TYPE_CHECKING:  # torch and friends load when a test first trains
    from model.evaluate import Evaluation
    from model.train import TrainConfig, TrainResult

ADMIN_TOKEN = "test-admin-token"


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without any DIGITLOOP_* setting, plus ``extra``.

    A developer's shell (an S3 endpoint, a canary model, an MLflow server) must not leak
    into the servers the tests start.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("DIGITLOOP_")}
    env.update(extra)
    return env


def digitloop_rollout(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """``digitloop rollout ARGS`` (what ``make canary`` and friends run) with only ``env``'s
    DIGITLOOP_* settings."""
    return subprocess.run(
        [str(VENV_BIN / "digitloop"), "rollout", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def register_models(
    mnist,
    env: dict[str, str],
    count: int = 2,
    n_train: int = 4000,
    epochs: int = 1,
    augment: bool = False,
    scored: int = 0,
    int8: int = 0,
) -> list[str]:
    """Train ``count`` small models (different seeds) and register them; returns versions.

    The first ``scored`` are registered with a novelty scorer (model.novelty) fitted on
    their training images and calibrated on 500 held-out ones; the rest without, as
    versions registered before scorers existed. The first ``int8`` are registered with an
    int8 export (model.export.quantize_int8), as `digitloop train` registers them; the rest
    are served by their fp32 export."""
    from model.registry import Registry, TrainingRecord
    from model.settings import ModelSettings
    from model.train import TrainConfig

    settings = ModelSettings(
        data_dir=Path(env["DIGITLOOP_DATA_DIR"]),
        mlflow_tracking_uri=env.get("DIGITLOOP_MLFLOW_TRACKING_URI"),
        registered_model=env.get("DIGITLOOP_REGISTERED_MODEL", "digitloop-mnist"),
        mlflow_experiment=env.get("DIGITLOOP_REGISTERED_MODEL", "digitloop"),
    )
    registry = Registry(settings)
    versions = []
    for seed in range(count):
        config = TrainConfig(epochs=epochs, batch_size=64, augment=augment, seed=seed)
        result, mnist_test = trained(mnist, n_train, config)
        novelty = None
        if seed < scored:
            from model.novelty import fit_for_version

            x, y, x_test, y_test = tiny_split(mnist, n_train, 500)
            novelty = fit_for_version(
                result.net, (x, y), (x_test, y_test), settings.novelty_share, fit_size=n_train
            )
        calibration = None
        if seed < int8:
            from model.export import calibration_digits

            calibration = calibration_digits(tiny_split(mnist, n_train, 1)[0])
        info = registry.log_and_register(
            result.net,
            TrainingRecord.of(
                config,
                result,
                mnist_test,
                {"mnist_train": n_train},
                parent_version=versions[-1] if versions else None,
                novelty=novelty,
                int8_calibration=calibration,
            ),
        )
        versions.append(info.version)
    return versions


# Training is seeded: the same sample and configuration give the same network, so a session
# trains each once (test_loop and test_simulate register the same 8000-image champion,
# test_dev and test_service_resilience the same 1500-image one).
_TRAINED: dict[tuple[int, int, TrainConfig], tuple[TrainResult, Evaluation, object]] = {}


def trained(mnist, n_train: int, config: TrainConfig) -> tuple[TrainResult, Evaluation]:
    """``n_train`` MNIST images trained with ``config`` and evaluated on 500 held-out ones:
    the :class:`~model.train.TrainResult` and its evaluation, trained once per session."""
    from model.evaluate import evaluate
    from model.train import train

    key = (id(mnist), n_train, config)
    if key not in _TRAINED:
        x, y, x_test, y_test = tiny_split(mnist, n_train, 500)
        result = train(x, y, config)
        # ``mnist`` is kept with its entry: while the entry lives, its id is not reused.
        _TRAINED[key] = (result, evaluate(result.net, x_test, y_test), mnist)
    result, mnist_test, _ = _TRAINED[key]
    return result, mnist_test


@dataclass
class Service:
    """A `bentoml serve` of services.service:DigitService on 127.0.0.1."""

    env: dict[str, str]
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        """Where the local store keeps records (when no S3 endpoint is set)."""
        return Path(self.env["DIGITLOOP_DATA_DIR"]) / "store"

    def start(self, timeout: float = 120, ready_path: str = "/readyz") -> Service:
        defaults = {
            "OMP_NUM_THREADS": "1",
            "DIGITLOOP_ADMIN_TOKEN": ADMIN_TOKEN,
            "DIGITLOOP_FLUSH_INTERVAL_S": "1",
            "DIGITLOOP_MNIST_PATH": str(MNIST_PATH),
            "BENTOML_DO_NOT_TRACK": "True",
            # Its own home: BentoML empties $BENTOML_HOME/prometheus_multiproc_dir when a
            # server starts, so servers sharing ~/bentoml lose each other's metrics.
            "BENTOML_HOME": str(self.log_path.parent / f"bentoml-{self.port}"),
        }
        env = clean_env(**{**defaults, **self.env})  # the test's settings win
        with self.log_path.open("a") as log:
            self.process = subprocess.Popen(
                [
                    str(VENV_BIN / "bentoml"),
                    "serve",
                    "services.service:DigitService",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                ],
                cwd=REPO_ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            # Each worker loads its model on its own and /readyz answers for the worker that
            # took the connection: several fresh connections in a row must find it ready.
            deadline = time.monotonic() + timeout
            wait_http(f"{self.url}{ready_path}", timeout=timeout, process=self.process)
            in_a_row = 0
            while in_a_row < 6:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.url}{ready_path} not ready on every worker")
                ready = httpx.get(f"{self.url}{ready_path}", timeout=5).is_success
                in_a_row = in_a_row + 1 if ready else 0
                if not ready:
                    time.sleep(0.3)
        except BaseException as exc:  # not ready: nobody will stop it but us
            self.stop()
            if isinstance(exc, RuntimeError | TimeoutError):
                raise RuntimeError(f"{exc}\n--- bentoml serve log ---\n{self.log_tail()}") from None
            raise
        return self

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def feedback_records(self) -> dict[str, dict]:
        """Every feedback record in the local store, by prediction id (``_key``: its key)."""
        records = {}
        for path in sorted(self.store_dir.glob("feedback/dt=*/hour=*/*.json")):
            record = json.loads(path.read_text())
            record["_key"] = path.relative_to(self.store_dir).as_posix()
            records[record["prediction_id"]] = record
        return records

    def wait_for_feedback(self, prediction_id: str, timeout: float = 10) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            record = self.feedback_records().get(prediction_id)
            if record is not None:
                return record
            time.sleep(0.1)
        raise AssertionError(f"no feedback record for {prediction_id} in {self.store_dir}")

    def terminate(self) -> int:
        """SIGTERM, as Kubernetes does, and wait for a clean exit."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        return self.process.wait(timeout=60)

    def stop(self) -> None:
        """SIGTERM to the group, 30 s, SIGKILL; also the workers, which BentoML's arbiter
        starts in sessions of their own (they would outlive a killed arbiter)."""
        if self.process is not None:
            stop_tree(self.process, grace=30)

    def client(self, **kwargs) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kwargs)

    def admin(self, client: httpx.Client, **body) -> httpx.Response:
        return client.post(
            "/admin/reload", json=body, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )


def sketch_png(digit: np.ndarray, size: int = 280) -> bytes:
    """An MNIST digit drawn black on white at sketchpad size, as PNG bytes."""
    import io

    from PIL import Image

    big = Image.fromarray(255 - digit).resize((size, size), Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    big.save(buffer, format="PNG")
    return buffer.getvalue()
