"""What every rollout driver shares: the interface, its error, and the three moves.

The moves (canary, promote, roll back) are pure functions of what serves now, so the loop,
the CLI and a person's ``helm upgrade`` all mean the same thing by them.
"""

from __future__ import annotations

from typing import Protocol

from contracts.errors import DigitloopError
from contracts.registry import CHALLENGER_ALIAS, CHAMPION_ALIAS
from contracts.routing import RoutingState
from model.registry import Registry


class RolloutError(DigitloopError, RuntimeError):
    """The serving side refused or could not be reached."""


class Rollout(Protocol):
    def current(self) -> RoutingState: ...
    def apply(self, state: RoutingState) -> None: ...


def with_canary(current: RoutingState, version: str, weight: int) -> RoutingState:
    return RoutingState(current.stable_model, version, weight)


def promoted(current: RoutingState) -> RoutingState:
    """Stable takes the canary's version; the canary is off. Idempotent."""
    if current.canary_model is None:
        return current
    return RoutingState(current.canary_model, None, 0)


def rolled_back(current: RoutingState) -> RoutingState:
    """The canary is off; stable is untouched. Idempotent."""
    return RoutingState(current.stable_model, None, 0)


def sync_aliases(registry: Registry, state: RoutingState) -> None:
    """Point ``champion`` at stable and ``challenger`` at the canary (or remove it)."""
    registry.set_alias(CHAMPION_ALIAS, registry.get(state.stable_model).version)
    if state.canary_model is None:
        registry.delete_alias(CHALLENGER_ALIAS)
    else:
        registry.set_alias(CHALLENGER_ALIAS, registry.get(state.canary_model).version)
