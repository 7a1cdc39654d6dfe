"""What the pinned Argo CLI (v4.0.6, ARGO_VERSION in mk/cluster.mk) prints, read by pure
functions: no process is started here.

The end-to-end test reads a workflow's result in two steps: the exit status of the command
that waited for it, then ``argo get NAME -o json``. It never takes a result from
``argo submit --wait -o json``: v4.0.6 prints the workflow as the API created it, before it
runs (cmd/argo/commands/submit.go:211), and ``--wait`` with ``-o json`` prints nothing more
(cmd/argo/commands/common/wait.go:76, quiet); :func:`finished_run` refuses such a workflow.

Every function is tested against outputs recorded in ``fixtures/argo/`` (``SOURCES.md`` says
which printer at v4.0.6 prints each and how it was built), in tests/e2e/test_argo_outputs.py.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

# Workflow phases (pkg/apis/workflow/v1alpha1/workflow_types.go): "" until the controller
# first sees the workflow, then Pending, Running, and one of these three.
FINISHED_PHASES = frozenset({"Succeeded", "Failed", "Error"})
# The label the cron controller puts on every workflow it starts (workflow/common/common.go
# LabelKeyCronWorkflow, set in convert.go toWorkflow); a manual submit from the
# WorkflowTemplate carries workflows.argoproj.io/workflow-template instead.
CRON_LABEL = "workflows.argoproj.io/cron-workflow"
TEMPLATE_LABEL = "workflows.argoproj.io/workflow-template"
# A retry's attempts are nodes named like their task plus "(N)" (operator.go, "%s(%d)").
_ATTEMPT = re.compile(r"\(\d+\)$")
# `argo get`/`--watch` text: fmt "%-20s %v" per header line (cmd/argo/commands/common/get.go).
_HEADER = re.compile(r"^(Name|Status):\s+(\S.*)$")


class ArgoOutputError(ValueError):
    """The text is not what the CLI prints for that call, or not what the caller needs."""


@dataclass(frozen=True)
class Step:
    """One node of a run's DAG: a task (by its display name) or the exit handler."""

    name: str
    template: str
    type: str  # Pod, Retry, Skipped, DAG, ...
    phase: str  # Succeeded, Failed, Error, Skipped, Omitted, Running, Pending
    message: str
    outputs: dict[str, str]  # output parameters that have a value


@dataclass(frozen=True)
class Run:
    """A workflow as ``argo get -o json`` or one item of ``argo list -o json`` shows it."""

    name: str
    phase: str  # "" for a workflow the controller has not seen yet
    created: datetime
    started: datetime | None
    finished: datetime | None
    message: str
    labels: dict[str, str]
    steps: dict[str, Step] = field(default_factory=dict)  # by task name; "" nodes left out

    @property
    def done(self) -> bool:
        """Finished: the controller set a final phase and the finish time."""
        return self.phase in FINISHED_PHASES and self.finished is not None

    @property
    def cron(self) -> str | None:
        """The CronWorkflow that started this run; None for a manual submit."""
        return self.labels.get(CRON_LABEL)

    def step(self, name: str) -> Step | None:
        """The task (or exit handler, by its template name) called ``name``; None when the
        DAG never reached it."""
        return self.steps.get(name)

    def step_phase(self, name: str) -> str | None:
        step = self.step(name)
        return step.phase if step else None

    def outputs(self, name: str) -> dict[str, str]:
        """Output parameters of a step that succeeded; empty for any other step."""
        step = self.step(name)
        return step.outputs if step and step.phase == "Succeeded" else {}

    def describe(self) -> str:
        """One line for an assertion message: the run, its phase and every step's phase."""
        steps = ", ".join(f"{s.name} {s.phase}" for s in self.steps.values())
        message = f" ({self.message})" if self.message else ""
        return f"{self.name} {self.phase or '(not started)'}{message}: {steps or 'no steps'}"


# -- argo submit -----------------------------------------------------------------------


def submitted_name(stdout: str) -> str:
    """The workflow name ``argo submit ... -o name`` prints (with or without ``--wait``,
    which prints nothing more with ``-o name``)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if len(lines) != 1 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", lines[0]):
        raise ArgoOutputError(f"expected one workflow name from `argo submit -o name`: {stdout!r}")
    return lines[0]


# -- argo get / argo list --------------------------------------------------------------


def parse_workflow(stdout: str) -> Run:
    """The run ``argo get NAME -o json`` prints (also what ``argo submit -o json`` prints:
    the workflow as created, phase "")."""
    return _run(_json(stdout, dict, "argo get -o json"))


def finished_run(stdout: str) -> Run:
    """The result ``argo get NAME -o json`` prints once the run has finished; a workflow
    that has not finished (such as what ``argo submit --wait -o json`` prints: the workflow
    as created) is no result and raises :class:`ArgoOutputError`."""
    run = parse_workflow(stdout)
    if not run.done:
        raise ArgoOutputError(
            f"workflow {run.name} has not finished (phase {run.phase!r}, "
            f"finishedAt {run.finished}): not a result. `argo submit --wait -o json` prints "
            "the workflow as created; read the result with `argo get NAME -o json`"
        )
    return run


def workflow_phase(stdout: str) -> str:
    """The phase of the workflow in ``argo get -o json`` output ("" when not started)."""
    return parse_workflow(stdout).phase


def parse_runs(stdout: str) -> list[Run]:
    """The runs ``argo list -o json`` prints (``[]`` when there are none), oldest first."""
    items = _json(stdout, list, "argo list -o json")
    return sorted((_run(item) for item in items), key=lambda run: (run.created, run.name))


def cron_runs(runs: list[Run], cron: str, since: datetime | None = None) -> list[Run]:
    """The runs ``cron`` started itself, created at or after ``since``, oldest first."""
    return [r for r in runs if r.cron == cron and (since is None or r.created >= since)]


# -- argo submit --watch (make loop) ---------------------------------------------------


def watch_result(stdout: str) -> tuple[str, str]:
    """(name, status) on the last screen ``argo submit --watch`` printed: its final state.

    Each screen is ``argo get``'s text (common/get.go PrintWorkflowHelper, header lines
    ``%-20s %v``); the screen clearing goes to stderr (Go's print, common/watch.go:85-86).
    """
    name = status = None
    for line in stdout.splitlines():
        match = _HEADER.match(line)
        if match and match.group(1) == "Name":
            name, status = match.group(2).strip(), None
        elif match:
            status = match.group(2).strip()
    if name is None or status is None:
        raise ArgoOutputError(
            f"no `Name:` and `Status:` lines in `argo submit --watch`: {stdout!r}"
        )
    return name, status


# -- plumbing --------------------------------------------------------------------------


def _json(stdout: str, kind: type, call: str) -> Any:
    try:
        value = json.loads(stdout)
    except ValueError as exc:
        raise ArgoOutputError(f"`{call}` did not print JSON ({exc}): {stdout[:200]!r}") from None
    if not isinstance(value, kind):
        raise ArgoOutputError(f"`{call}` printed a {type(value).__name__}, not a {kind.__name__}")
    return value


def _time(value: str | None) -> datetime | None:
    # metav1.Time marshals as RFC 3339 in UTC ("2026-06-15T10:00:00Z"), or null when zero.
    return datetime.fromisoformat(value) if value else None


def _run(workflow: dict[str, Any]) -> Run:
    try:
        metadata = workflow["metadata"]
        status = workflow.get("status") or {}
        created = _time(metadata["creationTimestamp"])
        name = metadata["name"]
    except (KeyError, TypeError) as exc:
        raise ArgoOutputError(f"not a Workflow: missing {exc}") from None
    if created is None:
        raise ArgoOutputError(f"workflow {name} has no creationTimestamp")
    return Run(
        name=name,
        phase=status.get("phase", ""),
        created=created,
        started=_time(status.get("startedAt")),
        finished=_time(status.get("finishedAt")),
        message=status.get("message", ""),
        labels=dict(metadata.get("labels") or {}),
        steps=_steps(name, status.get("nodes") or {}),
    )


def _steps(workflow: str, nodes: dict[str, dict[str, Any]]) -> dict[str, Step]:
    """The DAG's tasks by display name, and the exit handler by its template name.

    A task with a retry strategy is a Retry node (display name: the task) whose attempts
    are Pod nodes ("retrain(0)", ...); the Retry node carries the phase and, once it
    succeeded, its last attempt's outputs (operator.go processNodeRetries). A task without
    one is the Pod node itself. Skipped (a ``when`` false) and Omitted (a ``depends`` not
    met) tasks are nodes of type Skipped. The DAG node itself is named like the workflow.
    """
    steps: dict[str, Step] = {}
    for node in nodes.values():
        display = node.get("displayName") or node.get("name", "")
        if display == workflow or _ATTEMPT.search(display):
            continue  # the DAG itself, or one attempt of a retried step
        template = node.get("templateName", "")
        name = template if display == f"{workflow}.onExit" else display
        parameters = (node.get("outputs") or {}).get("parameters") or []
        steps[name] = Step(
            name=name,
            template=template,
            type=node.get("type", ""),
            phase=node.get("phase", ""),
            message=node.get("message", ""),
            outputs={p["name"]: str(p["value"]) for p in parameters if "value" in p},
        )
    return steps
