"""The canary split without a cluster: an exact, deterministic share of requests."""

from __future__ import annotations

import threading

from contracts.api import TRACK_HEADER, Track
from services.errors import BadRequest


class TrafficSplit:
    """Sends exactly ``weight`` of every 100 consecutive requests to the canary.

    A counter rather than a random draw: request n goes to the canary when
    ``floor((n + 1) * w / 100) > floor(n * w / 100)``, so the share is exact over any
    100 requests and evenly spread, not a coin flip that drifts at small counts.
    """

    def __init__(self, weight: int = 0) -> None:
        self._lock = threading.Lock()
        self._count = 0
        self.weight = weight

    @property
    def weight(self) -> int:
        return self._weight

    @weight.setter
    def weight(self, value: int) -> None:
        if not 0 <= value <= 100:
            raise BadRequest(f"canary weight must be 0-100, got {value}")
        self._weight = value

    def choose(self, pinned: str | None = None, canary_available: bool = True) -> Track:
        """The track of the next request; ``pinned`` is the request's track header."""
        if pinned:
            track = pinned.strip().lower()
            if track not in ("stable", "canary"):
                raise BadRequest(f"{TRACK_HEADER} must be 'stable' or 'canary', got {pinned!r}")
            if track == "canary" and not canary_available:
                raise BadRequest(f"{TRACK_HEADER}: canary requested but no canary is set")
            return track  # type: ignore[return-value]
        if not canary_available or self._weight == 0:
            return "stable"
        with self._lock:
            n = self._count
            self._count += 1
        return "canary" if (n + 1) * self._weight // 100 > n * self._weight // 100 else "stable"
