"""The Helm rollout reads what serves where from the chart's routing ConfigMap, through the
real ``kubernetes`` client, against ``tests/kube_stub.py`` (no API server runs here). The
ConfigMap is the chart's own render, so the chart and the reader cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.rollout import RolloutError, make_rollout
from pipelines.settings import LoopSettings
from services.state import RoutingState
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
