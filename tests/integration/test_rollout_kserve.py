"""The KServe rollout driver through the real kserve SDK, against a loopback API stand-in.

What the SDK sends (path, merge-patch content type, body) and how the driver waits on the
generation it made are real; the API server is ``tests/kube_stub.py`` since none runs here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from contracts.routing import RoutingState
from pipelines.rollout import RolloutError, make_rollout, promoted, rolled_back, with_canary
from pipelines.rollout.kserve import KServeRollout, predictor_container, with_track_env
from pipelines.settings import LoopSettings
from tests.chart.render import inference_service
from tests.kube_stub import KubeStub, kube_stub

pytestmark = pytest.mark.integration

NAMESPACE = "digitloop"


@pytest.fixture
def stub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KubeStub]:
    isvc = inference_service({"serving": {"backend": "kserve", "stable": {"modelVersion": "3"}}})
    with kube_stub() as stub:
        stub.add(isvc)
        stub.kubeconfig(tmp_path / "kubeconfig")
        # the SDK takes in-cluster config when this is set; here we are "outside" the cluster
        monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
        yield stub


def settings(stub: KubeStub, **changes: str) -> LoopSettings:
    return LoopSettings(
        rollout="kserve",
        namespace=NAMESPACE,
        kubeconfig=str(stub.kubeconfig_path),
        kube_context="stub",
        **changes,
    )


def rollout(stub: KubeStub) -> KServeRollout:
    driver = make_rollout(settings(stub))
    assert isinstance(driver, KServeRollout)
    driver.polling_interval = 0.05  # the stub is ready as soon as it is patched
    return driver


def test_canary_promote_and_rollback_through_the_sdk(stub: KubeStub) -> None:
    driver = rollout(stub)
    assert driver.current().stable_model == "3"

    driver.apply(with_canary(driver.current(), "4", 20))
    assert [p.content_type for p in stub.patches] == ["application/merge-patch+json"]
    assert stub.patches[0].body["spec"]["predictor"]["canaryTrafficPercent"] == 20
    live = stub.get(NAMESPACE, "digitloop-serving")
    assert live["metadata"]["generation"] == 2
    assert live["spec"]["predictor"]["labels"]["digitloop.dev/track"] == "canary"
    assert driver.current() == with_canary(driver.current(), "4", 20)

    driver.apply(promoted(driver.current()))
    assert driver.current().stable_model == "4"
    assert driver.current().canary_model is None

    driver.apply(with_canary(driver.current(), "5", 10))
    before = len(stub.patches)
    driver.apply(rolled_back(driver.current()))
    # traffic goes back to the running stable revision before a new one is made
    rollback = [p.body["spec"]["predictor"] for p in stub.patches[before:]]
    assert rollback[0] == {"canaryTrafficPercent": 0}
    assert rollback[1]["canaryTrafficPercent"] == 100
    assert driver.current().stable_model == "4"
    assert driver.current().canary_model is None


def test_a_missing_inference_service_is_a_clear_error(stub: KubeStub) -> None:
    with pytest.raises(RolloutError, match="cannot read InferenceService digitloop/nope"):
        make_rollout(settings(stub, inference_service="nope")).current()


def test_an_unreachable_api_server_is_a_clear_error(stub: KubeStub, tmp_path: Path) -> None:
    unreachable = KubeStub(url="http://127.0.0.1:9")  # discard port: nothing listens
    config = unreachable.kubeconfig(tmp_path / "unreachable")
    driver = make_rollout(
        LoopSettings(rollout="kserve", namespace=NAMESPACE, kubeconfig=str(config))
    )
    with pytest.raises(RolloutError, match="cannot read InferenceService"):
        driver.current()


def test_a_missing_kubeconfig_is_a_clear_error(tmp_path: Path) -> None:
    missing = LoopSettings(rollout="kserve", kubeconfig=str(tmp_path / "none"))
    with pytest.raises(RolloutError, match="cannot load the Kubernetes configuration"):
        make_rollout(missing)


def test_a_revision_that_never_becomes_ready_fails_the_rollout(stub: KubeStub) -> None:
    stub.becomes_ready = False
    driver = rollout(stub)
    driver.timeout = 1
    with pytest.raises(RolloutError, match="did not take"):
        driver.apply(with_canary(driver.current(), "4", 20))


def test_the_rollout_command_drives_kserve_and_moves_the_aliases(
    stub: KubeStub, tmp_path: Path, mnist
) -> None:
    """`digitloop rollout` (what `make canary/promote` run) through the SDK, with MLflow."""
    from contracts.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
    from model.registry import Registry
    from model.settings import ModelSettings
    from tests.serving import digitloop_rollout, register_models

    env = {"DIGITLOOP_DATA_DIR": str(tmp_path / "data")}
    first, second = register_models(mnist, env, count=2, n_train=500, epochs=1)
    container = predictor_container(stub.get(NAMESPACE, "digitloop-serving"))
    container["env"] = with_track_env(container, RoutingState(first))["env"]
    env |= {
        "DIGITLOOP_ROLLOUT": "kserve",
        "DIGITLOOP_NAMESPACE": NAMESPACE,
        "DIGITLOOP_KUBECONFIG": str(stub.kubeconfig_path),
    }

    def digitloop(*args: str) -> dict:
        done = digitloop_rollout(env, *args, "--json")
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    registry = Registry(ModelSettings(data_dir=tmp_path / "data"))
    assert digitloop("canary", second, "--weight", "30") == {
        "stable_model": first,
        "canary_model": second,
        "canary_weight": 30,
    }
    assert registry.get(CHALLENGER_ALIAS).version == second
    assert digitloop("status") == digitloop("canary", second, "--weight", "30")  # no-op
    assert digitloop("promote")["stable_model"] == second
    assert registry.get(CHAMPION_ALIAS).version == second
    assert len(stub.patches) == 2  # the repeated canary patched nothing

    refused = digitloop_rollout(env, "promote")
    assert refused.returncode == 2
    assert "no canary to promote" in refused.stderr


def test_when_mlflow_is_down_the_command_says_the_rollout_held(stub: KubeStub) -> None:
    from tests.serving import digitloop_rollout

    env = {
        "DIGITLOOP_ROLLOUT": "kserve",
        "DIGITLOOP_NAMESPACE": NAMESPACE,
        "DIGITLOOP_KUBECONFIG": str(stub.kubeconfig_path),
        "DIGITLOOP_MLFLOW_TRACKING_URI": "http://127.0.0.1:9",  # nothing listens on discard
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    }
    done = digitloop_rollout(env, "canary", "4", "--weight", "20")
    assert done.returncode == 2
    assert "now serving stable 3, canary 4 at 20 %, but MLflow's aliases were not moved" in (
        " ".join(done.stderr.split())
    )
    assert len(stub.patches) == 1
