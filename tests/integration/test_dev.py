"""`digitloop dev`: everything up on loopback, Ctrl-C stops it all, a restart keeps the state."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from services.store import LocalStore, read_predictions
from tests.conftest import MNIST_PATH, VENV_BIN, free_port, wait_http
from tests.serving import clean_env, register_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def start_dev(data_dir: Path, ports: dict[str, int], log: Path) -> subprocess.Popen:
    command = [
        str(VENV_BIN / "digitloop"),
        "dev",
        "--data-dir",
        str(data_dir),
        "--workers",
        "1",
        "--port",
        str(ports["serve"]),
        "--ui-port",
        str(ports["ui"]),
        "--mlflow-port",
        str(ports["mlflow"]),
    ]
    env = clean_env(DIGITLOOP_MNIST_PATH=str(MNIST_PATH), DIGITLOOP_FLUSH_INTERVAL_S="1")
    with log.open("a") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    for url in (
        f"http://127.0.0.1:{ports['serve']}/readyz",
        f"http://127.0.0.1:{ports['ui']}/",
        f"http://127.0.0.1:{ports['mlflow']}/health",
    ):
        wait_http(url, timeout=240, process=process)
    # Ready once it says so: a Ctrl-C while it still starts something aborts (exit 130).
    deadline = time.monotonic() + 60
    while "Ctrl-C stops everything" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    return process


def ctrl_c(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(timeout=90)


def test_dev_runs_everything_stops_on_ctrl_c_and_comes_back(tmp_path: Path, mnist):
    data_dir = tmp_path / "data"
    register_models(mnist, {"DIGITLOOP_DATA_DIR": str(data_dir)}, count=1, n_train=1500)
    ports = {"serve": free_port(), "ui": free_port(), "mlflow": free_port()}
    service = f"http://127.0.0.1:{ports['serve']}"

    process = start_dev(data_dir, ports, tmp_path / "dev-1.log")
    try:
        answer = httpx.post(
            f"{service}/predict", json={"pixels": mnist.x_test[0].tolist()}, timeout=30
        ).json()
        ack = httpx.post(
            f"{service}/feedback",
            timeout=30,
            json={"prediction_id": answer["prediction_id"], "label": 7},
        )
        assert ack.status_code == 200
    finally:
        exit_code = ctrl_c(process)
    assert exit_code == 0, (tmp_path / "dev-1.log").read_text()[-2000:]
    for port in ports.values():  # every child is gone
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"http://127.0.0.1:{port}/", timeout=2)
    logged = read_predictions(LocalStore(data_dir / "store"))
    assert answer["prediction_id"] in set(logged["prediction_id"])  # flushed on the way out

    process = start_dev(data_dir, ports, tmp_path / "dev-2.log")
    try:
        model = httpx.get(f"{service}/model", timeout=30).json()
        assert model["tracks"]["stable"]["model_version"] == answer["model_version"]
        again = httpx.post(
            f"{service}/feedback",
            timeout=30,
            json={"prediction_id": answer["prediction_id"], "label": 7},
        )
        assert again.status_code == 409  # the feedback of the first run is still there
    finally:
        assert ctrl_c(process) == 0
