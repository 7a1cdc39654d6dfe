"""The loop end to end on the embedded stack: drift -> retrain -> canary -> promote, and
a bad challenger rolled back. Real processes: `bentoml serve`, an MLflow server on SQLite,
the local store; the loop's own drift step finds the drift."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from digitloop_bench.shifts import make_shift
from digitloop_bench.simulator.population import train_bad_challenger

from model.registry import Registry
from model.settings import ModelSettings
from pipelines.decisions import Tally
from pipelines.drift.detect import DriftSettings
from pipelines.outputs import DriftOutput, RetrainOutput
from pipelines.rollout import sync_aliases, with_canary
from pipelines.rollout.service import ServiceRollout
from pipelines.runners.local import run_once
from pipelines.settings import DecisionSettings, LoopSettings
from pipelines.steps import LoopContext
from services.store.backends import StoreSettings
from tests.serving import ADMIN_TOKEN, Service, register_models

pytestmark = [pytest.mark.integration, pytest.mark.slow]

SHIFT = "small_offcentre"  # digits drawn tiny: the plain-MNIST champion errs on them


@pytest.fixture(scope="module")
def stack(tmp_path_factory, mlflow_server, mnist):
    root = tmp_path_factory.mktemp("loop")
    env = {
        "DIGITLOOP_DATA_DIR": str(root / "data"),
        "DIGITLOOP_MLFLOW_TRACKING_URI": mlflow_server,
        "DIGITLOOP_REGISTERED_MODEL": "digitloop-loop-test",
        "DIGITLOOP_WORKERS": "1",
    }
    # A champion of plain MNIST, without augmentation: good on MNIST, poor on the shift.
    register_models(mnist, env, count=1, n_train=8000, epochs=2)
    service = Service(env, root / "serve.log").start()
    yield env, service
    service.stop()


def context(env: dict[str, str], service: Service, run_id: str) -> LoopContext:
    from tests.conftest import MNIST_PATH

    data_dir = Path(env["DIGITLOOP_DATA_DIR"])
    return LoopContext(
        run_id=run_id,
        loop=LoopSettings(
            service_url=service.url,
            admin_token=ADMIN_TOKEN,
            retrain_epochs=2,
            retrain_mnist_limit=10000,
            holdout_fraction=0.25,
        ),
        decisions=DecisionSettings(
            min_new_labels=300,
            canary_min_answers=150,
            canary_max_labels=1000,
            new_canary_weight=20,
        ),
        drift=DriftSettings(drift_reference_size=1000),
        model=ModelSettings(
            data_dir=data_dir,
            mlflow_tracking_uri=env["DIGITLOOP_MLFLOW_TRACKING_URI"],
            registered_model=env["DIGITLOOP_REGISTERED_MODEL"],
            mnist_path=MNIST_PATH,
        ),
        store_settings=StoreSettings(data_dir=data_dir),
    )


def traffic(
    service: Service, images: np.ndarray, labels: np.ndarray, track: str | None = None
) -> Tally:
    """Users draw ``images``, and label every answer; returns how many were right."""
    headers = {"X-Digitloop-Track": track} if track else {}
    correct = 0
    with httpx.Client(base_url=service.url, timeout=60) as client:
        for start in range(0, len(images), 64):
            batch = images[start : start + 64]
            answers = client.post(
                "/predict_batch", json={"pixels": batch.tolist()}, headers=headers
            )
            assert answers.status_code == 200, answers.text
            for answer, truth in zip(answers.json(), labels[start : start + 64], strict=True):
                correct += answer["label"] == truth
                ack = client.post(
                    "/feedback",
                    json={
                        "prediction_id": answer["prediction_id"],
                        "label": int(truth),
                        "source": "test",
                    },
                )
                assert ack.status_code == 200, ack.text
    time.sleep(2.5)  # the predictions log flushes every second
    return Tally(len(images), int(correct))


def test_drift_retrain_canary_promote_then_bad_challenger_rolls_back(stack, mnist):
    env, service = stack
    x, y = make_shift(SHIFT, mnist.x_test[:3000], mnist.y_test[:3000], seed=3)
    before = traffic(service, x[:1000], y[:1000])

    first = run_once(context(env, service, "run-1"))
    assert first["drift_detected"] is True, first
    assert first["challenger"] == "2", first
    assert first["canary"] == "2", first
    outputs = context(env, service, "run-1")
    retrained = outputs.read(RetrainOutput)
    assert retrained is not None and retrained.gate_passed
    assert retrained.holdout_accuracy > before.accuracy
    model = httpx.get(f"{service.url}/model", timeout=10).json()
    assert model["tracks"]["canary"]["model_version"] == "2" and model["canary_weight"] == 20

    # Canary traffic: pinned requests speed the test up; the split itself is tested elsewhere.
    canary = traffic(service, x[1000:1400], y[1000:1400], track="canary")
    stable = traffic(service, x[1400:1800], y[1400:1800], track="stable")
    assert canary.accuracy > stable.accuracy
    second = run_once(context(env, service, "run-2"))
    assert second["outcome"] == "promoted v2", second
    model = httpx.get(f"{service.url}/model", timeout=10).json()
    assert model["tracks"]["stable"]["model_version"] == "2" and "canary" not in model["tracks"]
    registry = Registry(context(env, service, "x").model)
    assert registry.alias_version("champion") == "2"
    assert registry.alias_version("challenger") is None
    after = traffic(service, x[1800:2400], y[1800:2400])
    assert after.accuracy > before.accuracy + 0.05, (before, after)
    # The population v2 was adapted to no longer alarms (its drift reference holds the
    # traffic it was fine-tuned on), so the loop does not train again: no churn.
    quiet = run_once(context(env, service, "run-2-after"))
    drift = context(env, service, "run-2-after").read(DriftOutput)
    assert drift is not None and drift.drift_detected is False, drift
    assert drift.nearest_adapted_share is not None and drift.nearest_adapted_share > 0.5, drift
    assert quiet["challenger"] is None, quiet

    # A deliberately bad challenger (trained on shuffled labels) as the canary: rolled back.
    bad = train_bad_challenger(registry, mnist, n=1000)
    rollout = ServiceRollout(service.url, ADMIN_TOKEN)
    state = with_canary(rollout.current(), bad, 20)
    rollout.apply(state)
    sync_aliases(registry, state)
    traffic(service, x[2400:2700], y[2400:2700], track="canary")
    traffic(service, x[2700:3000], y[2700:3000], track="stable")
    third = run_once(context(env, service, "run-3"))
    assert third["outcome"] == f"rolled back v{bad}", third
    model = httpx.get(f"{service.url}/model", timeout=10).json()
    assert "canary" not in model["tracks"] and model["tracks"]["stable"]["model_version"] == "2"
    assert registry.alias_version("challenger") is None
