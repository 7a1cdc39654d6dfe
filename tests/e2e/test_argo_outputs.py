"""The end-to-end test's reading of the Argo CLI (tests/e2e/argo_cli.py), against what the
pinned v4.0.6 CLI prints for each call it parses (fixtures/argo/, SOURCES.md). Runs in the
normal suite: no cluster, no process."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.e2e.argo_cli import (
    ArgoOutputError,
    cron_runs,
    finished_run,
    parse_runs,
    parse_workflow,
    submitted_name,
    watch_result,
    workflow_phase,
)

FIXTURES = Path(__file__).parent / "fixtures" / "argo"
CRON = "digitloop-loop"
LOOP_STEPS = {
    "collect",
    "quality",
    "drift",
    "decide",
    "retrain",
    "canary",
    "analyse",
    "compact",
    "finish",
}


def recorded(name: str) -> str:
    return (FIXTURES / name).read_text(encoding="utf-8")


def test_every_recording_says_where_it_comes_from():
    sources = recorded("SOURCES.md")
    files = sorted(p.name for p in FIXTURES.iterdir() if p.suffix in (".json", ".txt"))
    assert len(files) >= 10
    missing = [name for name in files if f"`{name}`" not in sources]
    assert not missing, f"not described in SOURCES.md: {missing}"
    assert "v4.0.6" in sources


# -- the old bug: `argo submit --wait -o json` prints the workflow as created ----------


def test_what_submit_wait_json_prints_is_never_taken_as_a_result():
    created = recorded("submit-wait-json.json")
    # What the old test read: there is no phase at all in it.
    assert "phase" not in json.loads(created)["status"]
    run = parse_workflow(created)
    assert run.phase == "" and not run.done and run.finished is None and run.steps == {}
    assert workflow_phase(created) == ""
    with pytest.raises(ArgoOutputError, match=r"has not finished.*argo get NAME -o json"):
        finished_run(created)
    # Nor can it pass for the other outputs the test reads.
    with pytest.raises(ArgoOutputError, match="one workflow name"):
        submitted_name(created)
    with pytest.raises(ArgoOutputError, match="not a list"):
        parse_runs(created)


def test_a_run_still_going_is_no_result_either():
    text = recorded("get-cron-running.json")
    run = parse_workflow(text)
    assert run.phase == "Running" and not run.done
    assert run.step_phase("collect") == "Succeeded"
    assert run.step_phase("drift") == "Running" and run.outputs("drift") == {}
    assert run.step("retrain") is None  # the DAG has not reached it
    with pytest.raises(ArgoOutputError, match="has not finished"):
        finished_run(text)


# -- argo submit -o name ---------------------------------------------------------------


def test_the_submitted_name():
    assert submitted_name(recorded("submit-wait-name.txt")) == "digitloop-loop-x7k2p"
    with pytest.raises(ArgoOutputError):
        submitted_name("")


# -- argo get NAME -o json: phase and each step's outputs ------------------------------


def test_a_cron_run_that_retrained_and_rolled_out_a_canary():
    run = finished_run(recorded("get-cron-retrain-canary.json"))
    assert run.name == "digitloop-loop-1781517600"
    assert run.phase == "Succeeded" and run.done and run.cron == CRON
    assert run.created == datetime(2026, 6, 15, 10, 0, tzinfo=UTC)
    assert set(run.steps) == LOOP_STEPS  # one step per task; no "retrain(0)" attempts
    assert run.outputs("collect") == {
        "canary_active": "false",
        "stable_version": "1",
        "canary_version": "",
    }
    assert run.outputs("drift")["drift_detected"] == "true"
    assert run.outputs("decide") == {"retrain": "true"}
    retrain = run.outputs("retrain")
    assert retrain["gate_passed"] == "true" and retrain["challenger"] == "2"
    assert run.outputs("canary") == {"canary": "2", "weight": "50"}
    assert run.step("retrain").type == "Retry" and run.step("retrain").template == "retrain"
    analyse = run.step("analyse")
    assert analyse.phase == "Skipped" and "evaluated false" in analyse.message
    assert run.outputs("analyse") == {}
    assert run.outputs("finish") == {"outcome": "canary v2 at 50 %"}  # the exit handler
    assert "retrain Succeeded" in run.describe() and run.name in run.describe()


@pytest.mark.parametrize(
    ("fixture", "action", "stable", "canary"),
    [
        ("get-cron-analyse-promote.json", "promote", "1", "2"),
        ("get-cron-analyse-rollback.json", "rollback", "2", "3"),
    ],
)
def test_a_cron_run_that_judged_the_canary(fixture, action, stable, canary):
    run = finished_run(recorded(fixture))
    assert run.phase == "Succeeded" and run.cron == CRON
    collect = run.outputs("collect")
    assert collect == {"canary_active": "true", "stable_version": stable, "canary_version": canary}
    assert run.outputs("analyse") == {"action": action}
    assert run.step_phase("drift") == run.step_phase("decide") == "Skipped"
    assert run.step_phase("retrain") == run.step_phase("canary") == "Omitted"
    assert run.outputs("retrain") == {} and run.outputs("canary") == {}


def test_a_failed_manual_run():
    run = finished_run(recorded("get-manual-failed.json"))  # finished, so a result...
    assert run.phase == "Failed" and run.done  # ...that says it failed
    assert run.cron is None
    assert run.labels["workflows.argoproj.io/workflow-template"] == CRON
    retrain = run.step("retrain")
    assert retrain.phase == "Failed" and retrain.message == "No more retries left"
    assert run.outputs("retrain") == {}
    assert run.step_phase("canary") == "Omitted"
    assert "retrain Failed" in run.describe()


def test_a_step_without_retries_is_its_pod_node():
    workflow = {
        "metadata": {"name": "w", "creationTimestamp": "2026-06-15T10:00:00Z"},
        "status": {
            "phase": "Succeeded",
            "finishedAt": "2026-06-15T10:01:00Z",
            "nodes": {
                "w": {"id": "w", "name": "w", "displayName": "w", "type": "DAG"},
                "w-1": {
                    "name": "w.collect",
                    "displayName": "collect",
                    "type": "Pod",
                    "templateName": "collect",
                    "phase": "Succeeded",
                    "outputs": {"parameters": [{"name": "k", "value": "v"}], "exitCode": "0"},
                },
            },
        },
    }
    run = finished_run(json.dumps(workflow))
    assert set(run.steps) == {"collect"} and run.outputs("collect") == {"k": "v"}


@pytest.mark.parametrize("text", ["", "not json", "[]", '{"status": {}}'])
def test_other_text_is_refused_with_a_message(text):
    with pytest.raises(ArgoOutputError):
        parse_workflow(text)


# -- argo list -o json: the cron's own runs --------------------------------------------


def test_the_cron_runs_with_phase_and_creation_time():
    runs = parse_runs(recorded("list-cron-runs.json"))
    assert [r.name for r in runs] == sorted(r.name for r in runs)  # oldest first here
    assert [(r.phase, r.created.strftime("%H:%M")) for r in runs] == [
        ("Succeeded", "10:00"),
        ("Succeeded", "10:06"),
        ("Succeeded", "10:30"),
        ("Running", "10:32"),
    ]
    assert all(r.cron == CRON for r in runs)
    assert [r.done for r in runs] == [True, True, True, False]
    # Each listed item is the full workflow: its steps can be read from the list, too.
    assert runs[0].outputs("canary") == {"canary": "2", "weight": "50"}
    since = datetime(2026, 6, 15, 10, 6, tzinfo=UTC)
    assert [r.created.minute for r in cron_runs(runs, CRON, since)] == [6, 30, 32]
    assert cron_runs(runs, "another-cron") == []


def test_no_runs():
    assert parse_runs(recorded("list-empty.json")) == []


def test_manual_runs_are_not_the_crons():
    manual = parse_workflow(recorded("get-manual-failed.json"))
    cron = parse_workflow(recorded("get-cron-retrain-canary.json"))
    assert cron_runs([manual, cron], CRON) == [cron]


# -- make loop: argo submit --watch ----------------------------------------------------


def test_the_last_watch_screen_is_the_result():
    text = recorded("submit-watch.txt")
    assert watch_result(text) == ("digitloop-loop-q4m9z", "Succeeded")
    # As `make loop` prints it: make's echo of the command first.
    command = "bin/argo-v4.0.6 --context kind-digitloop submit -n digitloop --from ... --watch\n"
    assert watch_result(command + text) == ("digitloop-loop-q4m9z", "Succeeded")
    first_screen = text.split("Name:", 2)[1]
    assert watch_result("Name:" + first_screen) == ("digitloop-loop-q4m9z", "Pending")
    with pytest.raises(ArgoOutputError):
        watch_result("")
