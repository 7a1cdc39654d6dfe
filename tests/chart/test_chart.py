"""The chart lints, renders every ci/ scenario, and every object is valid for Kubernetes 1.36."""

from __future__ import annotations

import kubernetes_validate
import pytest

from tests.chart.render import (
    CHART,
    CRD_SCHEMAS,
    KUBE_VERSION,
    SCENARIOS,
    render_scenario,
    scenario_values,
    validate_custom,
)

pytestmark = pytest.mark.chart


def test_the_scenarios_cover_the_matrix() -> None:
    assert set(SCENARIOS) >= {
        "default",
        "canary-0",
        "canary-20",
        "canary-100",
        "kserve",
        "external-s3",
        "monitoring-off",
    }


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint(scenario: str) -> None:
    import helm_python as helm

    report = helm.lint(
        str(CHART), scenario_values(scenario), strict=True, kube_version=f"v{KUBE_VERSION}"
    )
    problems = [m for m in report["messages"] if m["severity"] >= 2] + report["errors"]
    assert not problems, problems


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_object_is_valid(scenario: str) -> None:
    checked = 0
    for path, obj in render_scenario(scenario):
        key = (obj["apiVersion"], obj["kind"])
        if key in CRD_SCHEMAS:
            validate_custom(obj)
        else:
            try:
                kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{path}: {obj['kind']}/{obj['metadata']['name']}: {exc.message}")
        checked += 1
    assert checked > 5


def test_an_unknown_field_in_a_custom_resource_is_caught() -> None:
    """The CRD validation is strict like the API server's: a typo does not pass silently."""
    route = next(o for _, o in render_scenario("default") if o["kind"] == "HTTPRoute")
    broken = {**route, "spec": {**route["spec"], "rulez": []}}
    with pytest.raises(Exception, match="rulez"):
        validate_custom(broken)


def test_a_bad_value_is_refused_by_the_schema() -> None:
    import helm_python as helm

    with helm.Chart.load(str(CHART)) as chart:
        for bad in (
            {"serving": {"canary": {"enabled": True, "modelVersion": "4", "weight": 120}}},
            {"serving": {"backend": "seldon"}},
            {"images": {"app": {"tag": "latest"}}},
            {"s3": {"bucket": "ab"}},
            {"serving": {"canary": {"enabled": True}}},
            {"workflow": {"timezone": "Paris time"}},  # Argo's controller would refuse it
            {"workflow": {"schedule": "every ten minutes"}},
        ):
            with pytest.raises(helm.HelmError):
                chart.validate_schema(bad)
