"""The KServe rollout driver and the chart write the same InferenceService.

The rollout step patches the live InferenceService through the kserve SDK, and a person may
render it from Helm values: both must give one object, or the two would fight. Each move's
patches, serialised by the SDK as they go on the wire and merged onto the chart's render of
the starting values, must give the chart's render of the target values.
"""

from __future__ import annotations

from typing import Any

import pytest
from kserve import ApiClient

from contracts.routing import RoutingState
from pipelines.rollout.kserve import as_inference_service, predictor_changes, routing_state
from tests.chart.render import inference_service
from tests.kube_stub import merge_patch

pytestmark = pytest.mark.chart


def values_for(state: RoutingState) -> dict[str, Any]:
    canary = (
        {"enabled": True, "modelVersion": state.canary_model, "weight": state.canary_weight}
        if state.canary_model
        else {"enabled": False, "weight": 0}
    )
    return {
        "serving": {
            "backend": "kserve",
            "stable": {"modelVersion": state.stable_model},
            "canary": canary,
        }
    }


def rendered_isvc(state: RoutingState) -> dict[str, Any]:
    return inference_service(values_for(state))


@pytest.mark.parametrize(
    ("start", "target"),
    [
        pytest.param(RoutingState("3"), RoutingState("3", "4", 20), id="canary"),
        pytest.param(RoutingState("3", "4", 20), RoutingState("3", "4", 50), id="reweigh"),
        pytest.param(RoutingState("3", "4", 20), RoutingState("4"), id="promote"),
        pytest.param(RoutingState("3", "4", 20), RoutingState("3"), id="rollback"),
    ],
)
def test_patches_take_the_chart_render_to_the_chart_render(
    start: RoutingState, target: RoutingState
) -> None:
    live = rendered_isvc(start)
    assert routing_state(live) == start
    for change in predictor_changes(live, target):
        wire = ApiClient().sanitize_for_serialization(as_inference_service(change, "x"))
        live = merge_patch(live, {"spec": wire["spec"]})
    assert live["spec"] == rendered_isvc(target)["spec"]
    assert routing_state(live) == target
