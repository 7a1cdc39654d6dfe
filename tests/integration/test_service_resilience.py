"""Nothing acknowledged is lost: an S3 outage under feedback, SIGTERM under load."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest
from minio import Minio

from services.store.backends import LocalStore
from services.store.readers import read_predictions
from tests.serving import Service, register_models

pytestmark = pytest.mark.integration


def test_feedback_during_an_s3_outage_reaches_the_bucket(tmp_path: Path, s3_server, mnist):
    env = {
        "DIGITLOOP_DATA_DIR": str(tmp_path / "data"),
        "DIGITLOOP_WORKERS": "1",
        "DIGITLOOP_S3_ENDPOINT": s3_server.endpoint,
        "DIGITLOOP_S3_ACCESS_KEY": s3_server.access_key,
        "DIGITLOOP_S3_SECRET_KEY": s3_server.secret_key,
    }
    register_models(mnist, env, count=1, n_train=1500)
    service = Service(env, tmp_path / "serve.log").start()
    try:
        with service.client() as client:
            ids = [
                client.post("/predict", json={"pixels": mnist.x_test[i].tolist()}).json()[
                    "prediction_id"
                ]
                for i in range(12)
            ]
            client.post("/feedback", json={"prediction_id": ids[0], "label": 1})
            s3_server.stop()
            acks = [
                client.post("/feedback", json={"prediction_id": pid, "label": 2}) for pid in ids[1:]
            ]
            assert [a.status_code for a in acks] == [200] * 11
            assert {a.json()["durable"] for a in acks} == {"spooled"}
            s3_server.start()  # back, and empty, like a MinIO that lost its volume

            bucket = Minio(
                s3_server.endpoint,
                access_key=s3_server.access_key,
                secret_key=s3_server.secret_key,
                secure=False,
            )

            def stored() -> set[str]:
                if not bucket.bucket_exists("digitloop"):
                    return set()
                return {
                    o.object_name.rsplit("/", 1)[1].removesuffix(".json")
                    for o in bucket.list_objects("digitloop", "feedback/", recursive=True)
                }

            deadline = time.monotonic() + 60
            while not set(ids[1:]) <= stored() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert set(ids[1:]) <= stored()
            assert "digitloop_feedback_spool_depth 0.0" in client.get("/metrics").text
    finally:
        service.stop()


def test_sigterm_under_load_loses_no_answered_prediction(tmp_path: Path, mnist):
    # A long flush interval: every answered prediction must come from the shutdown flush.
    env = {
        "DIGITLOOP_DATA_DIR": str(tmp_path / "data"),
        "DIGITLOOP_WORKERS": "2",
        "DIGITLOOP_FLUSH_INTERVAL_S": "600",
    }
    register_models(mnist, env, count=1, n_train=1500)
    service = Service(env, tmp_path / "serve.log").start()
    answered: list[str] = []
    lock = threading.Lock()
    stop = threading.Event()
    digit = mnist.x_test[7].tolist()

    def load() -> None:
        with httpx.Client(base_url=service.url, timeout=10) as client:
            while not stop.is_set():
                try:
                    response = client.post("/predict", json={"pixels": digit})
                except httpx.HTTPError:
                    return  # the server went away: stop this client
                if response.status_code == 200:
                    with lock:
                        answered.append(response.json()["prediction_id"])

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(3)
        assert answered, "no prediction answered before the SIGTERM"
        exit_code = service.terminate()
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        service.stop()
    assert exit_code == 0
    logged = set(read_predictions(LocalStore(tmp_path / "data" / "store"))["prediction_id"])
    missing = set(answered) - logged
    assert not missing, f"{len(missing)} of {len(answered)} answered predictions were lost"


def test_not_ready_until_a_model_is_registered(tmp_path: Path, mnist):
    """An empty registry (a cluster before its bootstrap job): up, not ready, then ready."""
    env = {"DIGITLOOP_DATA_DIR": str(tmp_path / "data"), "DIGITLOOP_WORKERS": "1"}
    from model.registry import Registry
    from model.settings import ModelSettings

    Registry(ModelSettings(data_dir=tmp_path / "data"))  # an empty registry, tables made here
    service = Service(env, tmp_path / "serve.log")
    # Start without waiting for /readyz: it must stay 503 while nothing is registered.
    service.start(ready_path="/livez")
    try:
        with service.client() as client:
            assert client.get("/readyz").status_code == 503
            answer = client.post("/predict", json={"pixels": mnist.x_test[0].tolist()})
            assert answer.status_code == 503 and "no model loaded" in answer.json()["error"]
            register_models(mnist, env, count=1, n_train=1000)
            deadline = time.monotonic() + 60
            while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
                time.sleep(0.5)
            assert client.get("/readyz").status_code == 200
            assert client.post("/predict", json={"pixels": mnist.x_test[0].tolist()}).is_success
    finally:
        service.stop()
