"""Signed prediction ids: any worker or pod can check an id and read what it predicted.

Feedback may reach another worker process (or, on the cluster, another pod) than the one
that answered the prediction, seconds before the predictions log is flushed. An id that
carries its track, model version and label, signed with a secret shared by every replica,
lets that replica refuse made-up ids (404) and count corrections per version and track
without any shared state. A draft's id (a prediction answered but not logged) starts with
``draft.`` under the signature, so no replica takes feedback on it, and dropping the prefix
breaks the signature.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from contracts.api import DRAFT_ID_PREFIX, PREDICTION_ID_PATTERN, Track
from contracts.records import time_ordered_hex
from services.errors import DraftTakesNoFeedback, UnknownPrediction

_ID = re.compile(PREDICTION_ID_PATTERN)


@dataclass(frozen=True)
class PredictionRef:
    """What a prediction id says about its prediction."""

    prediction_id: str
    track: Track
    model_version: str
    label: int
    draft: bool = False


class PredictionIds:
    """Issues and verifies ids ``[draft.]<uuidv7 hex>.<track>.<version>.<label>.<signature>``."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("the prediction id secret must be at least 16 bytes")
        self._secret = secret

    def _sign(self, payload: str) -> str:
        return hmac.new(self._secret, payload.encode(), hashlib.sha256).hexdigest()[:16]

    def new(self, track: Track, model_version: str, label: int, *, draft: bool = False) -> str:
        prefix = DRAFT_ID_PREFIX if draft else ""
        # Time-ordered, so the loop finds the prediction feedback labels in one hour of the
        # log (contracts.records.prediction_time); 74 random bits keep ids unguessable.
        unique = time_ordered_hex(datetime.now(UTC), secrets.randbits(74))
        payload = f"{prefix}{unique}.{track}.{model_version}.{label}"
        return f"{payload}.{self._sign(payload)}"

    def parse(self, prediction_id: str) -> PredictionRef:
        """Check an id; raises UnknownPrediction for anything this service did not issue."""
        match = _ID.match(prediction_id or "")
        if match is None or not hmac.compare_digest(
            self._sign(prediction_id.rsplit(".", 1)[0]), match.group(6)
        ):
            raise UnknownPrediction(
                f"unknown prediction_id {prediction_id!r}: use the id a /predict answer gave"
            )
        return PredictionRef(
            prediction_id=prediction_id,
            track=match.group(3),
            model_version=match.group(4),
            label=int(match.group(5)),
            draft=match.group(1) is not None,
        )

    def parse_for_feedback(self, prediction_id: str) -> PredictionRef:
        """:meth:`parse`, and DraftTakesNoFeedback for a draft's id."""
        ref = self.parse(prediction_id)
        if ref.draft:
            raise DraftTakesNoFeedback(
                f"prediction {prediction_id} is a draft, and drafts take no feedback: send "
                "the final drawing to /predict without draft, then give feedback on that id"
            )
        return ref


def new_secret() -> bytes:
    return secrets.token_hex(32).encode()
