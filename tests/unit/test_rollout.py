"""Rollout logic without a cluster: the three moves, Helm's arguments, KServe's patches."""

from __future__ import annotations

from typing import Any

import pytest

from contracts.routing import RoutingState
from pipelines.rollout import RolloutError, promoted, rolled_back, with_canary
from pipelines.rollout.helm import helm_upgrade_args
from pipelines.rollout.kserve import (
    ALL_TRAFFIC,
    PredictorChange,
    predictor_changes,
    routing_state,
    with_track_env,
)
from pipelines.settings import LoopSettings

STABLE = RoutingState("3")
CANARY = RoutingState("3", "4", 20)


def test_moves() -> None:
    assert with_canary(STABLE, "4", 20) == CANARY
    assert promoted(CANARY) == RoutingState("4")
    assert rolled_back(CANARY) == STABLE
    # both ends are idempotent: a retried step does nothing the second time
    assert promoted(STABLE) == STABLE
    assert rolled_back(STABLE) == STABLE


def test_helm_upgrade_args_are_what_a_person_types() -> None:
    settings = LoopSettings(helm_release="r", helm_chart="c", rollout_timeout=300)
    args = helm_upgrade_args(settings, CANARY)
    # The chart's defaults, then every value set so far, then these: --reuse-values would keep
    # the first install's defaults. No hooks: a rollout only moves traffic.
    assert args[:5] == ["upgrade", "r", "c", "--reset-then-reuse-values", "--no-hooks"]
    assert args[args.index("--timeout") + 1] == "300s"
    # versions are strings ("3", "champion"): --set would make 3 a number
    assert args[args.index("serving.stable.modelVersion=3") - 1] == "--set-string"
    assert args[args.index("serving.canary.modelVersion=4") - 1] == "--set-string"
    assert args[args.index("serving.canary.enabled=true") - 1] == "--set"
    assert args[args.index("serving.canary.weight=20") - 1] == "--set"
    off = helm_upgrade_args(settings, STABLE)
    assert "serving.canary.enabled=false" in off
    assert "serving.canary.weight=0" in off
    assert not any(a.startswith("serving.canary.modelVersion") for a in off)


def isvc(state: RoutingState, percent: int | None = None) -> dict[str, Any]:
    """A predictor as the chart writes it, for ``state``."""
    env = [
        {"name": "DIGITLOOP_ONLY_TRACK", "value": "canary" if state.canary_model else "stable"},
        {"name": "DIGITLOOP_STABLE_MODEL", "value": state.stable_model},
    ]
    if state.canary_model:
        env.append({"name": "DIGITLOOP_CANARY_MODEL", "value": state.canary_model})
    env += [
        {"name": "DIGITLOOP_WORKERS", "value": "1"},
        {
            "name": "DIGITLOOP_S3_SECRET_KEY",
            "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}},
        },
    ]
    predictor: dict[str, Any] = {
        "containers": [{"name": "kserve-container", "image": "serving:1", "env": env}],
        "labels": {"digitloop.dev/track": "canary" if state.canary_model else "stable"},
    }
    if percent is not None:
        predictor["canaryTrafficPercent"] = percent
    return {"metadata": {"name": "digitloop-serving"}, "spec": {"predictor": predictor}}


def test_routing_state_reads_the_newest_revision() -> None:
    assert routing_state(isvc(STABLE, 100)) == STABLE
    assert routing_state(isvc(STABLE)) == STABLE
    assert routing_state(isvc(CANARY, 20)) == CANARY
    # a canary with no percent takes everything, as KServe reads it
    assert routing_state(isvc(CANARY)) == RoutingState("3", "4", ALL_TRAFFIC)


def test_routing_state_refuses_a_foreign_inference_service() -> None:
    foreign = isvc(STABLE)
    foreign["spec"]["predictor"]["containers"][0]["env"] = []
    with pytest.raises(RolloutError, match="not made by the digitloop chart"):
        routing_state(foreign)
    foreign["spec"]["predictor"]["containers"][0]["name"] = "other"
    with pytest.raises(RolloutError, match="kserve-container"):
        routing_state(foreign)


def test_with_track_env_changes_only_the_track_variables() -> None:
    container = isvc(STABLE)["spec"]["predictor"]["containers"][0]
    changed = with_track_env(container, CANARY)
    assert changed == isvc(CANARY)["spec"]["predictor"]["containers"][0]
    assert container == isvc(STABLE)["spec"]["predictor"]["containers"][0]  # not mutated
    assert with_track_env(changed, STABLE) == container


@pytest.mark.parametrize(
    ("start", "target", "percents"),
    [
        pytest.param(STABLE, CANARY, [20], id="new canary: one new revision at the weight"),
        pytest.param(CANARY, RoutingState("4"), [100], id="promote: a stable revision of 4"),
        pytest.param(CANARY, STABLE, [0, 100], id="rollback: traffic back first, then stable"),
        pytest.param(CANARY, RoutingState("3", "5", 20), [20], id="a newer canary replaces it"),
    ],
)
def test_predictor_changes(start: RoutingState, target: RoutingState, percents: list[int]) -> None:
    changes = predictor_changes(isvc(start, start.canary_weight or 100), target)
    assert [c.canary_traffic_percent for c in changes] == percents
    last = changes[-1]
    assert last.container == isvc(target)["spec"]["predictor"]["containers"][0]
    assert last.track == ("canary" if target.canary_model else "stable")
    if len(changes) == 2:
        assert changes[0] == PredictorChange(0)  # no new revision: only the traffic moves
        assert changes[0].body() == {"spec": {"predictor": {"canaryTrafficPercent": 0}}}


def test_a_new_weight_moves_only_traffic_and_no_change_patches_nothing() -> None:
    assert predictor_changes(isvc(CANARY, 20), RoutingState("3", "4", 50)) == [PredictorChange(50)]
    assert predictor_changes(isvc(CANARY, 20), CANARY) == []
    assert predictor_changes(isvc(STABLE, 100), STABLE) == []
