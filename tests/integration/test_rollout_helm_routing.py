"""The Helm rollout reads what serves where from the chart's routing ConfigMap, through the
real ``kubernetes`` client, against ``tests/kube_stub.py`` (no API server runs here). The
ConfigMap is the chart's own render, so the chart and the reader cannot drift apart."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from contracts.routing import RoutingState
from pipelines.rollout import RolloutError, make_rollout
from pipelines.settings import LoopSettings
from tests.chart.render import NAMESPACE, render_scenario
from tests.kube_stub import kube_stub

pytestmark = pytest.mark.integration


def routing_config_map(scenario: str) -> dict:
    (found,) = [
        o
        for _, o in render_scenario(scenario)
        if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "digitloop-routing"
    ]
    return found


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [("default", RoutingState("champion")), ("canary-20", RoutingState("3", "4", 20))],
)
def test_the_helm_rollout_reads_the_chart_s_routing(
    tmp_path: Path, scenario: str, expected: RoutingState
) -> None:
    with kube_stub() as stub:
        stub.config_maps[(NAMESPACE, "digitloop-routing")] = routing_config_map(scenario)
        settings = LoopSettings(
            rollout="helm",
            namespace=NAMESPACE,
            kubeconfig=str(stub.kubeconfig(tmp_path / "kubeconfig")),
        )
        assert make_rollout(settings).current() == expected


def test_a_missing_routing_config_map_says_what_to_check(tmp_path: Path) -> None:
    with kube_stub() as stub:
        settings = LoopSettings(
            rollout="helm", namespace=NAMESPACE, kubeconfig=str(stub.kubeconfig(tmp_path / "k"))
        )
        with pytest.raises(
            RolloutError, match=r"digitloop/digitloop-routing: 404.*chart installed"
        ):
            make_rollout(settings).current()


def test_the_helm_rollout_takes_turns_with_another_operation(tmp_path: Path) -> None:
    """A person's `make canary` holds the release: the loop's upgrade waits, then goes, with
    the flags that keep earlier values and run no hooks."""
    from tests.unit.test_helm_cli import BUSY, OK, FakeHelm, fixture

    # The other upgrade started a moment ago: pending, not stuck.
    status = json.loads(fixture("status-pending-upgrade.json"))
    status["info"]["last_deployed"] = datetime.now(UTC).isoformat()
    fake = FakeHelm(tmp_path, {"upgrade": [BUSY, OK], "status": [{"stdout": json.dumps(status)}]})
    settings = LoopSettings(
        rollout="helm", helm_binary=str(fake.binary), namespace=NAMESPACE, helm_busy_wait=30
    )
    make_rollout(settings).apply(RoutingState("3", "4", 20))
    verbs = [call[0] for call in fake.calls()]
    assert verbs == ["upgrade", "status", "upgrade"]
    upgrade = fake.calls()[-1]
    assert upgrade[:3] == ["upgrade", "digitloop", "charts/digitloop"]
    assert {"--reset-then-reuse-values", "--no-hooks", "--wait"} <= set(upgrade)
    assert upgrade[upgrade.index("--namespace") + 1] == NAMESPACE
