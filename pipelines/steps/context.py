"""What every step of a run works with: settings, the store, the registry, the rollout driver.

Built once per process: the whole run in-process (:mod:`pipelines.runners.local`), or one step
in one Argo pod (:mod:`pipelines.runners.argo`). Steps hand their outputs to each other
through the store (``runs/<run_id>/<name>.json``), so a step in another pod reads what came
before it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TypeVar

from model.data import Mnist, load_mnist
from model.registry import Registry
from model.settings import ModelSettings
from pipelines.drift.detect import DriftSettings
from pipelines.outputs import StepOutput
from pipelines.rollout import Rollout, make_rollout
from pipelines.settings import DecisionSettings, LoopSettings
from pipelines.steps.window import Window, read_window
from services.store.backends import ObjectStore, StoreSettings, open_store

Output = TypeVar("Output", bound=StepOutput)


@dataclass
class LoopContext:
    """Everything a step touches. The store, registry, rollout driver and MNIST are opened on
    first use; a test may set them to its own."""

    run_id: str
    loop: LoopSettings = field(default_factory=LoopSettings)
    decisions: DecisionSettings = field(default_factory=DecisionSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    model: ModelSettings = field(default_factory=ModelSettings)
    store_settings: StoreSettings = field(default_factory=StoreSettings)
    now: datetime = field(default_factory=lambda: datetime.now(UTC))
    _windows: dict[tuple[datetime, datetime], Window] = field(default_factory=dict, repr=False)

    @cached_property
    def store(self) -> ObjectStore:
        return open_store(self.store_settings)

    @cached_property
    def registry(self) -> Registry:
        return Registry(self.model)

    @cached_property
    def rollout(self) -> Rollout:
        return make_rollout(self.loop)

    @cached_property
    def mnist(self) -> Mnist:
        return load_mnist(settings=self.model)

    def key(self, name: str) -> str:
        return f"runs/{self.run_id}/{name}.json"

    def save(self, output: StepOutput) -> None:
        self.store.put(self.key(output.name), output.model_dump_json().encode(), "application/json")

    def read(self, kind: type[Output]) -> Output | None:
        """A step's output in this run, typed; None if the step has not run."""
        key = self.key(kind.name)
        return kind.model_validate_json(self.store.get(key)) if self.store.exists(key) else None

    def window(self, since: datetime, until: datetime) -> Window:
        """The window ``[since, until)``, read from the store once per process and range."""
        if (since, until) not in self._windows:
            settle = timedelta(minutes=self.loop.window_settle_minutes)
            self._windows[since, until] = read_window(self.store, since, until, settle=settle)
        return self._windows[since, until]
