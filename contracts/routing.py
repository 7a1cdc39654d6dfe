"""What serves where: the stable model, the canary and its share of traffic.

One value every part reads and writes the same way: the service's workers (through their
state file), the rollout drivers (Helm values, the InferenceService) and the CLI.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class RoutingState:
    stable_model: str
    canary_model: str | None = None
    canary_weight: int = 0

    def with_changes(self, **changes: object) -> RoutingState:
        merged = {**asdict(self), **{k: v for k, v in changes.items() if v is not None}}
        if merged.get("canary_model") in ("", "none"):
            merged["canary_model"] = None
            merged["canary_weight"] = 0
        return RoutingState(**merged)  # type: ignore[arg-type]
