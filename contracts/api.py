"""The prediction service's HTTP contract: what it takes and what it answers.

The service validates with these, the client parses with them, and the OpenAPI document
is generated from them; nothing else redeclares a bound or a field.
"""

from __future__ import annotations

from typing import Literal

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, ...] = ("stable", "canary")
# Pins a request to a track, on the Gateway (an HTTPRoute header match) and in the service.
TRACK_HEADER = "X-Digitloop-Track"
