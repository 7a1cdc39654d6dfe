"""The prediction service as it runs: `bentoml serve` with moto's S3 and an MLflow server."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import httpx
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from minio import Minio

from tests.integration.conftest import S3Server
from tests.serving import Service, register_models, sketch_png

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def s3(tmp_path_factory) -> S3Server:
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory, mlflow_server, s3, mnist) -> Service:
    root = tmp_path_factory.mktemp("service")
    env = {
        "DIGITLOOP_DATA_DIR": str(root / "data"),
        "DIGITLOOP_MLFLOW_TRACKING_URI": mlflow_server,
        "DIGITLOOP_REGISTERED_MODEL": "digitloop-service-test",
        "DIGITLOOP_S3_ENDPOINT": s3.endpoint,
        "DIGITLOOP_S3_ACCESS_KEY": s3.access_key,
        "DIGITLOOP_S3_SECRET_KEY": s3.secret_key,
        "DIGITLOOP_S3_BUCKET": "digitloop-test",
        "DIGITLOOP_WORKERS": "2",
    }
    # Version 1 carries a novelty scorer and an int8 export (served by default); version 2
    # was registered as before either, and serves its fp32 export.
    assert register_models(mnist, env, scored=1, int8=1) == ["1", "2"]
    svc = Service(env, root / "serve.log").start()
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def bucket(s3) -> Minio:
    return Minio(s3.endpoint, access_key=s3.access_key, secret_key=s3.secret_key, secure=False)


@pytest.fixture(scope="module")
def pngs(mnist) -> list[tuple[bytes, int]]:
    return [(sketch_png(mnist.x_test[i]), int(mnist.y_test[i])) for i in range(40)]


def objects(bucket: Minio, prefix: str) -> list[str]:
    return sorted(
        o.object_name for o in bucket.list_objects("digitloop-test", prefix, recursive=True)
    )


def wait_for(condition, timeout: float = 20.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def test_predict_png_raw_and_array(service: Service, pngs):
    with service.client() as client:
        png, _ = pngs[0]
        multipart = client.post("/predict", files={"image": ("d.png", png, "image/png")})
        raw = client.post("/predict", content=png, headers={"content-type": "image/png"})
        digit = np.zeros((28, 28), np.uint8)
        digit[4:24, 12:16] = 255
        array = client.post("/predict", json={"pixels": digit.tolist()})
    for response in (multipart, raw, array):
        assert response.status_code == 200, response.text
        body = response.json()
        assert set(body) == {
            "prediction_id",
            "label",
            "probabilities",
            "model_version",
            "track",
            "draft",
            "novelty",
            "unusual",
        }
        assert isinstance(body["novelty"], float) and isinstance(body["unusual"], bool)
        assert body["draft"] is False and not body["prediction_id"].startswith("draft.")
        assert len(body["probabilities"]) == 10 and abs(sum(body["probabilities"]) - 1) < 1e-3
        assert body["label"] == int(np.argmax(body["probabilities"]))
        assert body["model_version"] == "1" and body["track"] == "stable"
    assert multipart.json()["label"] == raw.json()["label"]


def test_model_learnt_digits_from_drawn_pngs(service: Service, pngs):
    with service.client() as client:
        labels = [
            client.post("/predict", content=png, headers={"content-type": "image/png"}).json()[
                "label"
            ]
            for png, _ in pngs
        ]
    accuracy = np.mean([label == truth for label, (_, truth) in zip(labels, pngs, strict=True)])
    assert accuracy > 0.7  # a tiny model, far above chance (0.1)


def test_batch_is_one_answer_per_image(service: Service, pngs):
    files = [("images", (f"{i}.png", png, "image/png")) for i, (png, _) in enumerate(pngs[:5])]
    with service.client() as client:
        response = client.post("/predict_batch", files=files)
        single = client.post("/predict", content=pngs[3][0], headers={"content-type": "image/png"})
    assert response.status_code == 200, response.text
    answers = response.json()
    assert len(answers) == 5 and len({a["prediction_id"] for a in answers}) == 5
    assert answers[3]["label"] == single.json()["label"]


def test_answers_are_calibrated_with_the_version_s_temperature(service: Service, mnist):
    """Each version serves ``softmax(logits / T)`` of its registered artefact's logits, with
    the temperature its registration fitted; batch answers agree with single ones."""
    from model.calibration import apply_temperature
    from model.network import predict_proba
    from model.registry import Registry
    from model.settings import ModelSettings
    from services.inference import OnnxForward, array_to_pixels

    digits = [mnist.x_test[i].tolist() for i in range(3)]
    # /readyz answered for one worker; the other may still be loading its model.
    wait_for(
        lambda: _model_on_every_worker(service, lambda m: "stable" in m["tracks"]),
        what="every worker to serve a model",
    )
    with service.client() as client:
        answers = [client.post("/predict", json={"pixels": d}).json() for d in digits]
        batch = client.post("/predict_batch", json={"pixels": digits})
    assert batch.status_code == 200, batch.text
    registry = Registry(
        ModelSettings(
            data_dir=Path(service.env["DIGITLOOP_DATA_DIR"]),
            mlflow_tracking_uri=service.env["DIGITLOOP_MLFLOW_TRACKING_URI"],
            registered_model=service.env["DIGITLOOP_REGISTERED_MODEL"],
        )
    )
    net, info = registry.load(answers[0]["model_version"])
    assert "temperature" in info.tags and abs(info.temperature - 1.0) > 0.05
    pixels = np.stack([array_to_pixels(d) for d in digits])
    # Version 1 (the champion) is served by its int8 export, the default runtime.
    int8 = registry.onnx_int8(info)
    assert int8 is not None
    _, logits = OnnxForward(int8)(pixels)
    raw = np.exp(logits - logits.max(axis=1, keepdims=True))
    raw /= raw.sum(axis=1, keepdims=True)
    # Within int8's rounding of the network's own.
    np.testing.assert_allclose(raw, predict_proba(net, pixels), atol=0.05)
    served = np.array([a["probabilities"] for a in answers])
    np.testing.assert_allclose(served, apply_temperature(raw, info.temperature), atol=1e-4)
    assert np.abs(served - raw).max() > 1e-3  # not the network's own probabilities
    np.testing.assert_allclose([a["probabilities"] for a in batch.json()], served, atol=1e-4)


def test_answers_say_how_unusual_the_drawing_is_for_the_version(service: Service, mnist):
    """Version 1's scorer, fitted at registration, scores each answer from its one forward
    pass (its int8 export's embeddings): a blob unlike any digit is flagged, MNIST digits
    mostly not; batch agrees."""
    from model.registry import Registry
    from model.settings import ModelSettings
    from services.inference import OnnxForward, array_to_pixels

    wait_for(
        lambda: _model_on_every_worker(service, lambda m: "stable" in m["tracks"]),
        what="every worker to serve a model",
    )
    blob = np.zeros((28, 28), np.uint8)
    blob[6:22, 6:22] = 255  # a filled square: ink, but no digit
    drawings = [mnist.x_test[i].tolist() for i in range(20)] + [blob.tolist()]
    with service.client() as client:
        before = _counted(client.get("/metrics").text, "digitloop_unusual_answers_total")
        answers = [client.post("/predict", json={"pixels": d}).json() for d in drawings]
        batch = client.post("/predict_batch", json={"pixels": drawings}).json()
        after = client.get("/metrics").text
    registry = Registry(
        ModelSettings(
            data_dir=Path(service.env["DIGITLOOP_DATA_DIR"]),
            mlflow_tracking_uri=service.env["DIGITLOOP_MLFLOW_TRACKING_URI"],
            registered_model=service.env["DIGITLOOP_REGISTERED_MODEL"],
        )
    )
    _, info = registry.load("1")
    scorer = registry.novelty(info)
    assert scorer is not None and json.loads(info.tags["novelty"])["threshold"] > 0
    pixels = np.stack([array_to_pixels(d) for d in drawings])
    expected = scorer.score(OnnxForward(registry.onnx_int8(info))(pixels)[0])
    served = np.array([a["novelty"] for a in answers])
    np.testing.assert_allclose(served, expected, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose([a["novelty"] for a in batch], served, rtol=1e-3, atol=1e-2)
    assert [a["unusual"] for a in answers] == [bool(s > scorer.threshold) for s in expected]
    assert answers[-1]["unusual"] is True
    assert sum(a["unusual"] for a in answers[:-1]) <= 3
    # Counted per version and track: the single answers and the batch's.
    flagged = 2 * sum(a["unusual"] for a in answers)
    assert _counted(after, "digitloop_unusual_answers_total") - before == flagged
    assert 'digitloop_unusual_answers_total{model_version="1",track="stable"}' in after
    assert registry.novelty(registry.get("2")) is None  # its answers: see the canary test


def test_predictions_and_feedback_land_in_the_bucket(service: Service, bucket, pngs):
    with service.client() as client:
        predicted = client.post(
            "/predict", content=pngs[1][0], headers={"content-type": "image/png"}
        ).json()
        truth = (predicted["label"] + 1) % 10  # a correction
        ack = client.post(
            "/feedback",
            json={"prediction_id": predicted["prediction_id"], "label": truth, "source": "test"},
        )
    assert ack.status_code == 200, ack.text
    assert ack.json() == {
        "prediction_id": predicted["prediction_id"],
        "label": truth,
        "correct": False,
        "durable": "stored",
    }
    from contracts.records import feedback_marker_key, key_hour, prediction_time

    day = datetime.now(UTC).strftime("%Y-%m-%d")
    [key] = [
        k for k in objects(bucket, "feedback/") if k.endswith(f"/{predicted['prediction_id']}.json")
    ]
    # In the hour it arrived; the id carries the time it was made, seconds before.
    made = prediction_time(predicted["prediction_id"])
    assert made is not None and abs(datetime.now(UTC) - made).total_seconds() < 60
    assert key_hour(key) is not None and key.startswith(f"feedback/dt={day}/hour=")
    assert feedback_marker_key(predicted["prediction_id"]) in objects(bucket, "feedback-ids/")
    record = json.loads(bucket.get_object("digitloop-test", key).read())
    assert record["label"] == truth and record["source"] == "test"
    assert record["prediction_id"] == predicted["prediction_id"]

    def logged():
        import pyarrow.parquet as pq

        for name in objects(bucket, f"predictions/dt={day}/"):
            assert name.endswith(".parquet")
            table = pq.read_table(io.BytesIO(bucket.get_object("digitloop-test", name).read()))
            rows = table.to_pylist()
            for row in rows:
                if row["prediction_id"] == predicted["prediction_id"]:
                    return row
        return None

    row = wait_for(logged, what="the prediction in the predictions log")
    assert row["label"] == predicted["label"] and row["track"] == "stable"
    assert len(row["image"]) == 784 and len(row["probabilities"]) == 10
    assert row["latency_ms"] > 0
    assert row["novelty"] == pytest.approx(predicted["novelty"], rel=1e-3, abs=1e-2)


def _counted(metrics: str, name: str) -> float:
    """The sum of a Prometheus counter over its labels."""
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in metrics.splitlines()
        if line.startswith(name + "{")
    )


def test_drafts_are_answered_but_never_logged(service: Service, s3, pngs, mnist):
    from services.store.backends import S3Store
    from services.store.readers import read_predictions

    png = pngs[6][0]
    raw = {"content": png, "headers": {"content-type": "image/png"}}
    # One connection, so one worker: its predictions log keeps the order of the requests.
    with service.client() as client:
        before = client.get("/metrics").text
        drafts = [
            client.post("/predict", json={"pixels": mnist.x_test[6].tolist(), "draft": True}),
            client.post("/predict", params={"draft": "true"}, **raw),
            client.post(
                "/predict", params={"draft": "true"}, files={"image": ("d.png", png, "image/png")}
            ),
        ]
        after = client.get("/metrics").text
        final = client.post("/predict", params={"draft": "false"}, **raw)
        on_draft = client.post(
            "/feedback", json={"prediction_id": drafts[1].json()["prediction_id"], "label": 3}
        )
        on_final = client.post(
            "/feedback", json={"prediction_id": final.json()["prediction_id"], "label": 3}
        )
        not_a_flag = client.post("/predict", params={"draft": "yes"}, **raw)
    for draft in drafts:
        assert draft.status_code == 200, draft.text
        body = draft.json()
        assert body["draft"] is True and body["prediction_id"].startswith("draft.")
        assert len(body["probabilities"]) == 10 and body["model_version"] and body["track"]
    assert final.status_code == 200 and final.json()["draft"] is False
    assert final.json()["label"] == drafts[1].json()["label"]  # the same drawing, answered alike
    assert on_draft.status_code == 422
    assert "drafts take no feedback" in on_draft.json()["error"]
    assert "without draft" in on_draft.json()["error"]
    assert on_final.status_code == 200, on_final.text
    assert not_a_flag.status_code == 400 and "true or false" in not_a_flag.json()["error"]
    # Drafts have a counter of their own; the prediction counters count predictions only.
    assert (
        _counted(after, "digitloop_drafts_total") - _counted(before, "digitloop_drafts_total") == 3
    )
    assert _counted(after, "digitloop_predictions_total") == _counted(
        before, "digitloop_predictions_total"
    )

    store = S3Store(s3.endpoint, s3.access_key, s3.secret_key, "digitloop-test")
    final_id = final.json()["prediction_id"]

    def flushed() -> set[str] | None:
        """The logged ids once the final prediction, sent after the drafts, is among them."""
        ids = set(read_predictions(store)["prediction_id"])
        return ids if final_id in ids else None

    logged = wait_for(flushed, what="the final prediction in the predictions log")
    assert not {draft.json()["prediction_id"] for draft in drafts} & logged


@pytest.mark.parametrize(
    ("kwargs", "status", "message"),
    [
        (
            {"content": b"not an image", "headers": {"content-type": "image/png"}},
            422,
            "not a readable",
        ),
        (
            {
                "content": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64,
                "headers": {"content-type": "image/png"},
            },
            422,
            "not a readable",
        ),
        ({"content": b"x" * 2_000_001, "headers": {"content-type": "image/png"}}, 413, "at most"),
        ({"json": {"pixels": [[0] * 28] * 28}}, 422, "empty"),
        ({"json": {"pixels": [1, 2, 3]}}, 400, "pixels"),
        ({"json": {}}, 400, "exactly one"),
        ({"json": {"image": "aGVsbG8=", "pixels": [[1]]}}, 400, "exactly one"),
        ({"json": {"what": 1}}, 400, "pixels"),
        ({"content": b"{nope", "headers": {"content-type": "application/json"}}, 400, "JSON"),
        ({"files": {"wrong": ("a.png", b"x", "image/png")}}, 400, "multipart field `image`"),
    ],
)
def test_bad_predict_input_gets_a_clear_4xx(service: Service, kwargs, status, message):
    with service.client() as client:
        response = client.post("/predict", **kwargs)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]


def test_batch_over_the_limit_is_413(service: Service, pngs):
    files = [("images", ("a.png", pngs[0][0], "image/png"))] * 65
    with service.client() as client:
        response = client.post("/predict_batch", files=files)
    assert response.status_code == 413 and "at most 64" in response.json()["error"]


def test_feedback_errors(service: Service, pngs):
    with service.client() as client:
        pid = client.post(
            "/predict", content=pngs[2][0], headers={"content-type": "image/png"}
        ).json()["prediction_id"]
        first = client.post("/feedback", json={"prediction_id": pid, "label": 3})
        duplicate = client.post("/feedback", json={"prediction_id": pid, "label": 3})
        unknown = client.post("/feedback", json={"prediction_id": pid[:-4] + "beef", "label": 3})
        out_of_range = client.post("/feedback", json={"prediction_id": pid, "label": 10})
        not_a_number = client.post("/feedback", json={"prediction_id": pid, "label": "seven"})
    assert first.status_code == 200
    assert duplicate.status_code == 409 and "already recorded" in duplicate.json()["error"]
    assert unknown.status_code == 404 and "unknown prediction_id" in unknown.json()["error"]
    assert out_of_range.status_code == 400 and "0-9" in out_of_range.json()["error"]
    assert not_a_number.status_code == 400


def test_admin_reload_needs_the_token(service: Service):
    with service.client() as client:
        missing = client.post("/admin/reload", json={"stable_model": "2"})
        wrong = client.post(
            "/admin/reload", json={"stable_model": "2"}, headers={"Authorization": "Bearer nope"}
        )
    assert missing.status_code == 401 and wrong.status_code == 403


def _model_on_every_worker(service: Service, check) -> bool:
    # A fresh connection per call lands on any worker; all of them must agree.
    return all(check(httpx.get(f"{service.url}/model", timeout=10).json()) for _ in range(12))


def test_reload_canary_split_and_pin(service: Service, pngs, mnist):
    with service.client() as client:
        answer = service.admin(client, canary_model="2", canary_weight=20)
        assert answer.status_code == 200, answer.text
        assert answer.json()["tracks"]["canary"]["model_version"] == "2"
    wait_for(
        lambda: _model_on_every_worker(
            service, lambda m: m["canary_weight"] == 20 and "canary" in m["tracks"]
        ),
        what="every worker to serve the canary",
    )

    digit = mnist.x_test[0].tolist()

    def one(_):
        with httpx.Client(base_url=service.url, timeout=30) as client:
            return [
                client.post("/predict", json={"pixels": digit}).json()["track"] for _ in range(300)
            ]

    with ThreadPoolExecutor(4) as pool:
        tracks = [t for chunk in pool.map(one, range(4)) for t in chunk]
    share = tracks.count("canary") / len(tracks)
    assert abs(share - 0.20) <= 0.02, share

    with service.client() as client:
        pinned = [
            client.post(
                "/predict", json={"pixels": digit}, headers={"X-Digitloop-Track": "canary"}
            ).json()
            for _ in range(10)
        ]
        bad_pin = client.post(
            "/predict", json={"pixels": digit}, headers={"X-Digitloop-Track": "blue"}
        )
        assert {(p["track"], p["model_version"]) for p in pinned} == {("canary", "2")}
        # Version 2 was registered without a novelty scorer: it answers, with no score.
        assert {(p["novelty"], p["unusual"]) for p in pinned} == {(None, False)}
        assert bad_pin.status_code == 400
        # Promote: stable takes version 2, canary off.
        promoted = service.admin(client, stable_model="2", canary_model="")
        assert promoted.status_code == 200, promoted.text
    wait_for(
        lambda: _model_on_every_worker(
            service,
            lambda m: m["tracks"]["stable"]["model_version"] == "2" and "canary" not in m["tracks"],
        ),
        what="every worker to serve version 2",
    )


def test_the_rollout_command_drives_the_service(service: Service):
    """`digitloop rollout` (what `make canary` runs) through /admin/reload, aliases in MLflow."""
    from contracts.registry import CHALLENGER_ALIAS
    from model.registry import Registry
    from model.settings import ModelSettings
    from tests.serving import ADMIN_TOKEN, digitloop_rollout

    env = {
        "DIGITLOOP_ROLLOUT": "service",
        "DIGITLOOP_SERVICE_URL": service.url,
        "DIGITLOOP_ADMIN_TOKEN": ADMIN_TOKEN,
        "DIGITLOOP_MLFLOW_TRACKING_URI": service.env["DIGITLOOP_MLFLOW_TRACKING_URI"],
        "DIGITLOOP_REGISTERED_MODEL": service.env["DIGITLOOP_REGISTERED_MODEL"],
        "DIGITLOOP_DATA_DIR": service.env["DIGITLOOP_DATA_DIR"],
    }

    def rollout(*args: str) -> dict:
        done = digitloop_rollout(env, *args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    stable = rollout("status")["stable_model"]
    other = "1" if stable == "2" else "2"
    assert rollout("canary", other, "--weight", "30") == {
        "stable_model": stable,
        "canary_model": other,
        "canary_weight": 30,
    }
    model = httpx.get(f"{service.url}/model", timeout=30).json()
    assert (model["tracks"]["canary"]["model_version"], model["canary_weight"]) == (other, 30)
    registry = Registry(
        ModelSettings(
            data_dir=Path(env["DIGITLOOP_DATA_DIR"]),
            mlflow_tracking_uri=env["DIGITLOOP_MLFLOW_TRACKING_URI"],
            registered_model=env["DIGITLOOP_REGISTERED_MODEL"],
        )
    )
    assert registry.get(CHALLENGER_ALIAS).version == other
    assert rollout("rollback") == {"stable_model": stable, "canary_model": None, "canary_weight": 0}
    wait_for(
        lambda: _model_on_every_worker(service, lambda m: "canary" not in m["tracks"]),
        what="every worker to drop the canary",
    )


def test_the_service_rollout_reads_and_reloads_through_the_client(service: Service):
    from contracts.routing import RoutingState
    from pipelines.rollout import RolloutError
    from pipelines.rollout.service import ServiceRollout
    from tests.serving import ADMIN_TOKEN

    rollout = ServiceRollout(service.url, ADMIN_TOKEN)
    state = rollout.current()
    model = httpx.get(f"{service.url}/model", timeout=30).json()
    assert state == RoutingState(model["tracks"]["stable"]["model_version"], None, 0)
    rollout.apply(state)  # the same state again changes nothing
    assert rollout.current() == state
    with pytest.raises(RolloutError, match="answered 403: wrong admin token"):
        ServiceRollout(service.url, "not-the-token").apply(state)
    with pytest.raises(RolloutError, match="answered 404"):
        rollout.apply(RoutingState("999"))
    assert rollout.current() == state


def test_metrics_count_predictions_and_corrections(service: Service, pngs):
    with service.client() as client:
        predicted = client.post(
            "/predict", content=pngs[5][0], headers={"content-type": "image/png"}
        ).json()
        client.post(
            "/feedback",
            json={
                "prediction_id": predicted["prediction_id"],
                "label": (predicted["label"] + 1) % 10,
            },
        )
        refused = client.post(
            "/predict", content=b"{", headers={"content-type": "application/json"}
        )
        assert refused.status_code == 400
        text = client.get("/metrics").text
    lines = text.splitlines()
    assert any(line.startswith("digitloop_predictions_total{") for line in lines)
    assert any(line.startswith("digitloop_corrections_total{") for line in lines)
    assert any(
        line.startswith("digitloop_requests_total{") and 'route="/predict",status="400"' in line
        for line in lines
    )
    assert any(line.startswith("digitloop_request_duration_seconds_bucket") for line in lines)
    assert any(line.startswith("digitloop_model_info{") for line in lines)
    assert any(line.startswith("digitloop_answer_confidence_bucket{") for line in lines)
    assert any(line.startswith("digitloop_feedback_spool_depth") for line in lines)
    # /predict is answered beside BentoML's API machinery (services.service.DirectPredict),
    # inside its middlewares: BentoML's own request metrics still count it.
    assert any(
        line.startswith("bentoml_service_request_total{") and 'endpoint="/predict"' in line
        for line in lines
    )
    assert any(
        line.startswith("bentoml_service_request_duration_seconds_count{")
        and 'endpoint="/predict"' in line
        for line in lines
    )


bodies = st.one_of(
    st.binary(max_size=2048),
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False)
        | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=6)
            | st.dictionaries(
                st.sampled_from(
                    ["image", "pixels", "images", "label", "prediction_id", "source", "draft", "x"]
                ),
                children,
                max_size=4,
            )
        ),
        max_leaves=30,
    ).map(lambda v: json.dumps(v).encode()),
)


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    route=st.sampled_from(["/predict", "/predict_batch", "/feedback", "/admin/reload"]),
    body=bodies,
    content_type=st.sampled_from(
        [
            "application/json",
            "image/png",
            "multipart/form-data",
            "text/plain",
            "application/octet-stream",
            "",
        ]
    ),
)
def test_fuzzed_requests_never_get_a_5xx(service: Service, route, body, content_type):
    headers = {"content-type": content_type} if content_type else {}
    response = httpx.post(f"{service.url}{route}", content=body, headers=headers, timeout=30)
    assert response.status_code < 500, (route, content_type, body[:80], response.text)


def test_still_ready_after_everything(service: Service):
    assert httpx.get(f"{service.url}/readyz", timeout=10).status_code == 200
    log = Path(service.log_path).read_text()
    assert "Traceback" not in log or "unexpected error" not in log
