"""The prediction service's HTTP contract: what it takes and what it answers.

Every bound is a constraint of a field here, declared once: the service validates requests
with these models (:mod:`services.inputs` adds only the parsing of HTTP bodies), answers by
dumping them, and documents both in its OpenAPI document (:mod:`services.openapi`); the
client (:mod:`services.client`) parses the answers with them.

Requests are strict, as their JSON Schema reads: a number is not a string, nor a boolean a
number, and unknown fields are refused; an integer may be written 2 or 2.0. Answers are
lenient, so a client keeps working against a service that adds a field.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    RootModel,
    WithJsonSchema,
    model_validator,
)

Track = Literal["stable", "canary"]
TRACKS: tuple[Track, ...] = get_args(Track)
# Pins a request to a track, on the Gateway (an HTTPRoute header match) and in the service.
TRACK_HEADER = "X-Digitloop-Track"

DIGITS = 10
# The most images one /predict_batch takes; a client splits longer lists at it.
MAX_BATCH = 64
# The longest side of a drawing, in pixels, whether sent as pixels or as an encoded image.
MAX_SIDE = 4096
FEEDBACK_SOURCE_MAX = 64
# Seconds a caller waits for an answer unless told otherwise: long enough for a prediction
# under load, short enough to tell a person that the service is slow.
DEFAULT_TIMEOUT_S = 10.0

# [draft.]<uuid>.<track>.<model version>.<predicted label>.<signature>: what /predict answers,
# so any replica can read a prediction from its id (services/ids.py signs and checks it). A
# draft's id starts with "draft.", under the signature: /feedback tells it apart and refuses it.
DRAFT_ID_PREFIX = "draft."
PREDICTION_ID_PATTERN = (
    rf"^({re.escape(DRAFT_ID_PREFIX)})?([0-9a-f]{{32}})"
    rf"\.({'|'.join(TRACKS)})\.([0-9]{{1,9}})\.([0-9])\.([0-9a-f]{{16}})$"
)
# A model version ("3") or alias ("champion"): the characters MLflow allows in an alias.
MODEL_REF_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"


def _whole(value: object) -> object:
    """An integer as JSON Schema has it: 2 or 2.0 (strict mode alone refuses 2.0), never
    "2" nor true (strict mode refuses those)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Digit = Annotated[int, Field(ge=0, le=DIGITS - 1)]
Percent = Annotated[int, Field(ge=0, le=100)]
FeedbackSource = Annotated[str, Field(min_length=1, max_length=FEEDBACK_SOURCE_MAX)]
PredictionId = Annotated[str, Field(pattern=PREDICTION_ID_PATTERN)]
ModelRef = Annotated[str, Field(pattern=MODEL_REF_PATTERN)]
_WholeNumber = BeforeValidator(_whole)

# PNG/JPEG bytes: base64 in JSON (OpenAPI's "byte" format), raw bytes otherwise.
ImageBytes = Annotated[
    bytes,
    WithJsonSchema(
        {"type": "string", "format": "byte", "description": "PNG or JPEG bytes, base64."}
    ),
]
Row = Annotated[list[float], Field(min_length=1, max_length=MAX_SIDE)]
Pixels = Annotated[
    list[Row],
    Field(
        min_length=1,
        max_length=MAX_SIDE,
        description=f"A grey drawing as rows of numbers (0-255, or 0-1), at most "
        f"{MAX_SIDE}x{MAX_SIDE}, every row as long (rows of unequal length answer 422). "
        "Any size: the service crops to the ink and scales it to 28x28.",
    ),
]


def _exactly_one(first: str, second: str, kinds: tuple[str, str]) -> dict[str, Any]:
    """JSON Schema for "exactly one of the two fields, not null" (null counts as absent)."""
    return {
        "oneOf": [
            {"required": [name], "properties": {name: {"type": kind}}}
            for name, kind in zip((first, second), kinds, strict=True)
        ]
    }


# -- requests ---------------------------------------------------------------------------------


class _Input(BaseModel):
    """Base of the request bodies: strict, no unknown fields."""

    model_config = ConfigDict(extra="forbid", strict=True)


class FeedbackInput(_Input):
    """The body of ``POST /feedback``: the true digit of a prediction."""

    prediction_id: PredictionId = Field(
        description="The id a /predict answer gave; a draft's id takes no feedback (422)."
    )
    label: Annotated[Digit, _WholeNumber] = Field(description="The true digit, 0-9.")
    source: FeedbackSource = Field(
        default="user",
        description=f"Who labelled it (user, simulator, ...), 1-{FEEDBACK_SOURCE_MAX} characters.",
    )


class ReloadInput(_Input):
    """The body of ``POST /admin/reload``: what to serve; an absent field keeps its value."""

    stable_model: ModelRef | None = Field(default=None, description="Version or alias for stable.")
    canary_model: Annotated[str, Field(pattern=r"^$|" + MODEL_REF_PATTERN)] | None = Field(
        default=None, description='Version or alias for the canary; "" removes the canary.'
    )
    canary_weight: Annotated[Percent, _WholeNumber] | None = Field(
        default=None, description="Percent of traffic to the canary, 0-100."
    )


class _ImageInput(_Input):
    """Base of the image bodies: images are base64 in JSON."""

    model_config = ConfigDict(val_json_bytes="base64", ser_json_bytes="base64")


class PredictInput(_ImageInput):
    """One drawing: PNG/JPEG bytes (``image``), or ``pixels``, a 2-D array; exactly one."""

    model_config = ConfigDict(
        json_schema_extra=_exactly_one("image", "pixels", ("string", "array"))
    )
    image: ImageBytes | None = Field(default=None, description="PNG or JPEG bytes, base64.")
    pixels: Pixels | None = None
    draft: bool = Field(
        default=False,
        description="A drawing still in progress (a sketchpad predicting as the pen lifts): "
        "answered, but not logged as a prediction, and its id takes no feedback. Query "
        "parameter `?draft=true` does the same for an image body.",
    )

    @model_validator(mode="after")
    def _one_drawing(self) -> PredictInput:
        if (self.image is None) == (self.pixels is None):
            raise ValueError(
                "send exactly one of an image (PNG/JPEG body, multipart `image`, or "
                "base64 `image` in JSON) or `pixels` (a 2-D array, JSON)"
            )
        return self


class PredictBatchInput(_ImageInput):
    """Many drawings: files in ``images`` (repeated), or ``pixels``, a list of 2-D arrays."""

    model_config = ConfigDict(
        json_schema_extra=_exactly_one("images", "pixels", ("array", "array"))
    )
    images: (
        Annotated[
            list[ImageBytes],
            Field(
                min_length=1,
                max_length=MAX_BATCH,
                description=f"PNG or JPEG images (base64 in JSON), 1-{MAX_BATCH}.",
            ),
        ]
        | None
    ) = None
    pixels: (
        Annotated[
            list[Pixels],
            Field(
                min_length=1,
                max_length=MAX_BATCH,
                description=f"Grey drawings, each as rows of numbers, 1-{MAX_BATCH}.",
            ),
        ]
        | None
    ) = None

    @model_validator(mode="after")
    def _one_kind(self) -> PredictBatchInput:
        if (self.images is None) == (self.pixels is None):
            raise ValueError(
                f"send exactly one of `images` (1-{MAX_BATCH} multipart files, or base64 in "
                f"JSON) or `pixels` (1-{MAX_BATCH} 2-D arrays, JSON)"
            )
        return self


# -- answers ----------------------------------------------------------------------------------


class _Answer(BaseModel):
    """Base of the answers: immutable; the service always sends every field, so the
    document marks them all required, while a client reading an older service's answer
    takes the defaults."""

    model_config = ConfigDict(frozen=True, json_schema_serialization_defaults_required=True)


class ErrorAnswer(_Answer):
    """Every error the service answers, with its 4xx or 5xx status."""

    error: str = Field(min_length=1, description="What went wrong, in plain words.")


class Prediction(_Answer):
    """The answer of ``/predict``, and of each image ``/predict_batch`` could predict."""

    prediction_id: str = Field(description="Pass it back to /feedback.")
    label: Digit = Field(description="The predicted digit.")
    probabilities: list[float] = Field(
        min_length=DIGITS, max_length=DIGITS, description="Probability of each digit 0-9."
    )
    model_version: str
    track: Track = Field(description="The track that answered.")
    draft: bool = Field(
        default=False,
        description="An answer to a draft: not logged, and its id takes no feedback.",
    )
    novelty: float | None = Field(
        default=None,
        description="How unusual the drawing is for the model version that answered (higher "
        "is more unusual; its relative Mahalanobis distance to the version's training "
        "data); null when the version has no novelty scorer.",
    )
    unusual: bool = Field(
        default=False,
        description="The novelty is above the version's threshold, which flags a known share "
        "(DIGITLOOP_NOVELTY_SHARE, 5 %) of held-out drawings like its training data: a "
        "drawing unlike what it learnt, worth asking the person for the true digit. False "
        "without a scorer.",
    )

    @property
    def confidence(self) -> float:
        """Probability of the predicted digit."""
        return self.probabilities[self.label]

    def top(self, k: int = 3) -> list[tuple[int, float]]:
        """The ``k`` most probable digits with their probabilities, most probable first."""
        order = sorted(range(DIGITS), key=lambda digit: self.probabilities[digit], reverse=True)
        return [(digit, self.probabilities[digit]) for digit in order[:k]]


class ImageError(_Answer):
    """A /predict_batch item for an image that could not be predicted; the others are."""

    index: int = Field(ge=0, description="The image's position in the request, from 0.")
    status: int = Field(
        description="What /predict answers for this image alone: 413 over the size limit, "
        "422 not a readable image or too little ink."
    )
    error: str = Field(description="Why, in plain words.")


class BatchAnswer(RootModel[list[Prediction | ImageError]]):
    """The answer of /predict_batch: one answer per image, in the order sent, a prediction
    or the error of an image that could not be predicted."""

    root: list[Prediction | ImageError] = Field(min_length=1, max_length=MAX_BATCH)


class FeedbackAck(_Answer):
    """The answer of ``/feedback``: the record is durable."""

    prediction_id: str
    label: Digit
    correct: bool = Field(description="Whether the prediction was right.")
    durable: Literal["stored", "spooled"] = Field(
        description="'stored' in the store, or 'spooled' until it is back."
    )


class TrackInfo(_Answer):
    """The model version one track serves."""

    model_version: str
    aliases: list[str] = Field(
        default_factory=list, description="MLflow aliases of the version (champion, ...)."
    )
    trained_on: dict[str, Any] = Field(
        default_factory=dict, description="What the version was trained on."
    )
    mnist_test_accuracy: float | None = None


class ModelInfo(_Answer):
    """What each track serves and the split: the answer of /model and /admin/reload."""

    tracks: dict[Track, TrackInfo]
    canary_weight: Percent = Field(default=0, description="Percent of requests to the canary.")
    only_track: Track | None = Field(
        default=None,
        description="The one track this replica serves (a cluster pod), or null: both.",
    )
