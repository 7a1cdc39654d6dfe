"""Every ``DIGITLOOP_*`` variable the chart renders is a field of a settings class that the
process reading it has, with a value that class accepts; the track header is the service's.

The chart spells variable names in its templates (a container's env, the ConfigMap and the
Secret the loop's steps take whole): these tests hold each to the settings classes, in every
ci/ scenario and with every optional variable set.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import pytest
import yaml

from tests.chart.render import CHART, SCENARIOS, objects, render, scenario_values
from tests.settings_catalog import NAME, classes, fields_of, from_values

pytestmark = pytest.mark.chart

VALUES = CHART / "values.yaml"

# The settings classes each process of the release reads.
READERS = {
    "serving": ("ServingSettings", "StoreSettings", "ModelSettings"),
    "ui": ("UISettings",),
    "bootstrap": ("ModelSettings",),  # `digitloop models` and `digitloop train`
    "loop": ("LoopSettings", "DecisionSettings", "DriftSettings", "ModelSettings", "StoreSettings"),
}


def every_optional_variable() -> dict[str, Any]:
    """Values that make the chart render the variables no scenario sets."""
    extra = classes()["DecisionSettings"].env_name("canary_min_answers")
    return {
        "secrets": {"webhookUrl": "https://hooks.example.invalid/loop"},
        "workflow": {"env": {extra: "100"}},
    }


CASES = {scenario: scenario_values(scenario) for scenario in SCENARIOS}
CASES["every-optional-variable"] = every_optional_variable()


def component(obj: dict[str, Any], template: dict[str, Any]) -> str | None:
    """Which process a pod runs: by kind, else by its app.kubernetes.io/component label."""
    if obj["kind"] == "InferenceService":
        return "serving"
    if obj["kind"] in ("WorkflowTemplate", "CronWorkflow"):
        return "loop"
    name = template.get("metadata", {}).get("labels", {}).get("app.kubernetes.io/component")
    return "serving" if name and name.startswith("serving-") else name


def containers(obj: dict[str, Any]) -> list[tuple[str | None, str, dict[str, Any]]]:
    """(component, name, container) of every container an object runs."""
    spec = obj.get("spec", {})
    if obj["kind"] == "InferenceService":
        return [("serving", c["name"], c) for c in spec["predictor"].get("containers", [])]
    if obj["kind"] == "WorkflowTemplate":
        steps = [t for t in spec.get("templates", []) if "container" in t]
        return [("loop", t["name"], t["container"]) for t in steps]
    template = spec.get("jobTemplate", {}).get("spec", spec).get("template", {})
    pod = template.get("spec", {})
    owner = component(obj, template)
    return [
        (owner, c["name"], c) for c in pod.get("initContainers", []) + pod.get("containers", [])
    ]


def problems(values: dict[str, Any]) -> list[str]:
    """What the chart renders with ``values`` that no reader's settings class takes."""
    rendered = list(objects(render(values)))
    data = {
        (o["kind"], o["metadata"]["name"]): o.get("data") or o.get("stringData") or {}
        for _, o in rendered
        if o["kind"] in ("ConfigMap", "Secret")
    }
    readers: dict[tuple[str, str, str | None], set[str]] = defaultdict(set)  # (kind, name, key)
    found: list[str] = []
    for path, obj in rendered:
        for owner, label, container in containers(obj):
            where = f"{path} ({obj['kind']}/{obj['metadata']['name']}, {label})"
            env: dict[str, object] = {}
            for source in container.get("envFrom", []):
                for kind, ref in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                    if ref in source:
                        readers[kind, source[ref]["name"], None].add(owner)
                        env.update(data.get((kind, source[ref]["name"]), {}))
            for item in container.get("env", []):
                if not NAME.fullmatch(item["name"]):
                    continue
                if owner not in READERS:
                    found.append(f"{where} sets {item['name']}, but no settings class reads it")
                    continue
                if item["name"] not in fields_of(*READERS[owner]):
                    found.append(f"{where} sets {item['name']}, which {owner} does not read")
                reference = item.get("valueFrom", {})
                for kind, ref in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
                    if ref in reference:
                        key = (kind, reference[ref]["name"], reference[ref]["key"])
                        readers[key].add(owner)
                        env[item["name"]] = data.get(key[:2], {}).get(key[2])
                if "value" in item:
                    env[item["name"]] = item["value"]
            found += invalid(where, owner, env)
    for (kind, name), keys in data.items():
        for key in filter(NAME.fullmatch, keys):
            owners = readers[kind, name, None] | readers[kind, name, key]
            if not owners:
                found.append(f"{kind}/{name} holds {key}, which no container reads")
            elif key not in fields_of(*(c for owner in owners for c in READERS.get(owner, ()))):
                found.append(f"{kind}/{name} holds {key}, which {sorted(owners)} do not read")
    return found


def invalid(where: str, owner: str | None, env: dict[str, object]) -> list[str]:
    """The values each of ``owner``'s settings classes refuses, all given at once."""
    out = []
    for name in READERS.get(owner, ()):
        cls = classes()[name]
        given = {
            field: env[cls.env_name(field)]
            for field in cls.model_fields
            if env.get(cls.env_name(field)) is not None
        }
        try:
            from_values(cls, given)
        except ValueError as exc:  # pydantic's ValidationError
            out.append(f"{where}: {name} refuses {given}: {exc}")
    return out


@pytest.mark.parametrize("case", sorted(CASES))
def test_every_rendered_variable_is_a_setting_its_reader_has(case: str) -> None:
    found = problems(CASES[case])
    assert not found, "\n".join(found)


def test_the_check_sees_a_variable_no_reader_has() -> None:
    stray = "DIGITLOOP_" + "NO_SUCH_SETTING"
    found = problems({"workflow": {"env": {stray: "1"}}})
    assert found == [f"ConfigMap/digitloop-config holds {stray}, which ['loop'] do not read"]


def test_the_check_sees_a_value_its_reader_refuses() -> None:
    rate = classes()["DecisionSettings"].env_name("false_promotion_rate")
    found = problems({"workflow": {"env": {rate: "2"}}})
    assert found, "a false promotion rate of 2 (above 1) passed"
    for refused in found:  # once per step of the loop
        assert "WorkflowTemplate/digitloop-loop" in refused
        assert "DecisionSettings refuses {'false_promotion_rate': '2'}" in refused


@pytest.mark.parametrize("scenario", ["default", "canary-20"])
def test_the_track_header_is_the_service_s(scenario: str) -> None:
    from contracts.api import TRACK_HEADER

    rendered = render(scenario_values(scenario))
    (route,) = [
        o
        for _, o in objects(rendered)
        if o["kind"] == "HTTPRoute" and o["metadata"]["name"].endswith("-serving")
    ]
    names = {
        header["name"]
        for rule in route["spec"]["rules"]
        for match in rule.get("matches", [])
        for header in match.get("headers", [])
    }
    assert names == {TRACK_HEADER}
    assert f"-H '{TRACK_HEADER}: canary'" in rendered["digitloop/templates/NOTES.txt"]


def test_the_track_header_is_no_value() -> None:
    assert "trackHeader" not in yaml.safe_load(VALUES.read_text())["serving"]


def test_the_stable_track_serves_the_champion_alias_by_default() -> None:
    from contracts.registry import CHAMPION_ALIAS

    stable = yaml.safe_load(VALUES.read_text())["serving"]["stable"]
    assert stable["modelVersion"] == CHAMPION_ALIAS
