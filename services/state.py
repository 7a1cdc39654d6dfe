"""Which model versions the service runs, shared by its worker processes through a file.

An ``/admin/reload`` request reaches one worker; the others learn of it by watching this
file, so every worker serves the same versions within a second, with no restart.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

from contracts.routing import RoutingState


class StateFile:
    """Atomic reads and writes of a :class:`RoutingState` as JSON."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def mtime_ns(self) -> int:
        try:
            return self.path.stat().st_mtime_ns
        except FileNotFoundError:
            return 0

    def read(self) -> RoutingState | None:
        try:
            return RoutingState(**json.loads(self.path.read_text()))
        except FileNotFoundError:
            return None

    def write(self, state: RoutingState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", dir=self.path.parent, delete=False) as tmp:
            json.dump(asdict(state), tmp)
        os.replace(tmp.name, self.path)
