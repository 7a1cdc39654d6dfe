"""The end-to-end test's values file (e2e-values.yaml), statically: the chart accepts it, it
reaches the loop's ConfigMap and CronWorkflow, and every setting it names exists (a typo
would leave a default in force and the loop slow to close, with nothing failing)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.chart.render import objects, render

pytestmark = pytest.mark.chart

VALUES = Path(__file__).parent / "e2e-values.yaml"


def test_the_e2e_values_reach_the_loop():
    values = yaml.safe_load(VALUES.read_text())
    rendered = dict(
        ((o["kind"], o["metadata"]["name"]), o) for _, o in objects(render(values))
    )  # render() validates against values.schema.json first
    config = rendered["ConfigMap", "digitloop-config"]["data"]
    for name, value in values["workflow"]["env"].items():
        assert config.get(name) == str(value), name
    cron = rendered["CronWorkflow", "digitloop-loop"]["spec"]
    assert cron["schedules"] == [values["workflow"]["schedule"]] == ["*/2 * * * *"]


def test_every_setting_named_exists():
    from pipelines.drift.detect import DriftSettings
    from pipelines.settings import DecisionSettings, LoopSettings

    known = {
        f"DIGITLOOP_{field.upper()}"
        for settings in (DecisionSettings, LoopSettings, DriftSettings)
        for field in settings.model_fields
    }
    names = set(yaml.safe_load(VALUES.read_text())["workflow"]["env"])
    assert names <= known, f"not a loop setting: {sorted(names - known)}"
