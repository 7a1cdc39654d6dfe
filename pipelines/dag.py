"""The loop's DAG as data: steps in order, what each reads, when each runs.

The single description both runners use: :mod:`pipelines.runners.local` runs it in-process and
:mod:`pipelines.workflows.loop` renders it as Argo's DAG (``depends`` and ``when``).
No heavy imports here, so rendering the workflow does not load torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Condition:
    """Run only when ``outputs[step][key] == value`` (Argo: a ``when`` expression)."""

    step: str
    key: str
    value: bool

    def holds(self, outputs: dict[str, dict[str, Any]]) -> bool:
        return bool(outputs.get(self.step, {}).get(self.key, False)) == self.value

    def argo(self) -> str:
        return (
            f"{{{{tasks.{self.step}.outputs.parameters.{self.key}}}}} == "
            f"{'true' if self.value else 'false'}"
        )


ORDER = ("collect", "quality", "drift", "decide", "retrain", "canary", "analyse")
FINISH = "finish"  # the exit handler: summary in the store and MLflow, the webhook
STEP_NAMES = (*ORDER, FINISH)

NEEDS: dict[str, tuple[str, ...]] = {
    "collect": (),
    "quality": ("collect",),
    "drift": ("collect",),
    "decide": ("collect", "quality", "drift"),
    "retrain": ("collect", "decide"),
    "canary": ("retrain",),
    "analyse": ("collect",),
}

NO_CANARY = Condition("collect", "canary_active", False)
WHEN: dict[str, Condition | None] = {
    "collect": None,
    "quality": None,
    "drift": NO_CANARY,  # a canary being judged: no retraining on top of it
    "decide": NO_CANARY,
    "retrain": Condition("decide", "retrain", True),
    "canary": Condition("retrain", "gate_passed", True),
    "analyse": Condition("collect", "canary_active", True),
}


def should_run(step: str, outputs: dict[str, dict[str, Any]]) -> bool:
    condition = WHEN[step]
    return condition is None or condition.holds(outputs)
