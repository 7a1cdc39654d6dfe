"""Request bodies of every route, parsed by us rather than by BentoML.

One route takes an image three ways: a raw ``image/png`` (or jpeg) body, a multipart
upload (field ``image``, or ``images`` repeated for a batch), or JSON ``{"pixels": ...}``.
BentoML 1.4 cannot declare an optional file field, and its multipart path writes each
upload to a temporary file; parsing here reads the bytes once, in memory, with a size
bound; JSON routes take JSON whatever the Content-Type says (BentoML would try, and
fail, to parse a form). A body we cannot read does not raise here (BentoML would answer
a bare 500): the problem and its status go to ``request.state`` and the API answers it
like every other error (:func:`request_problem`).

The models below are the one declaration of what a request may hold: every bound (a label
0-9, the prediction id's format, a drawing's size, the batch limit) is a constraint of a
field, so the same model validates the request and describes it in the OpenAPI document
(:mod:`services.openapi`). Every way in (JSON, multipart, raw bytes) is validated by it, in
strict mode: a number is not a string, nor a boolean a number, as the schema says. A body
that breaks them answers 400, or 413 for a list longer than its bound (too many images,
too many pixels). What a schema cannot say (that bytes decode to an image, that a drawing
holds ink) is the service's to check, and answers 422.
"""

from __future__ import annotations

import math
import os
from http import HTTPStatus
from typing import Annotated, Any, ClassVar

from _bentoml_sdk.io_models import IODescriptor
from pydantic import (
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from starlette.datastructures import UploadFile
from starlette.requests import Request

from model.preprocess import MAX_PIXELS
from services.ids import _ID as PREDICTION_ID
from services.settings import ServingSettings

# The largest body either route reads; one image is bounded again by max_image_bytes.
MAX_BODY_BYTES = int(os.environ.get("DIGITLOOP_MAX_BODY_BYTES", str(64 * 2_000_000)))
IMAGE_TYPES = ("image/", "application/octet-stream")
# The most images in one /predict_batch: the service's setting (DIGITLOOP_MAX_BATCH).
MAX_BATCH = ServingSettings().max_batch
# The longest side of a drawing sent as pixels: the largest square image the decoder takes.
MAX_SIDE = math.isqrt(MAX_PIXELS)
# A model version ("3") or alias ("champion"): the characters MLflow allows in an alias.
MODEL_REF = r"^[A-Za-z0-9_-]{1,255}$"


def _whole(cls: type, value: object) -> object:
    """An integer as JSON Schema has it: 2 or 2.0 (strict mode alone refuses 2.0), never
    "2" nor true (strict mode refuses those)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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


# A "1" drawn in 8x8 pixels: the document's example (services/openapi.py), predicted.
EXAMPLE_DRAWING = [[255 if 3 <= x <= 4 and 1 <= y <= 6 else 0 for x in range(8)] for y in range(8)]


def _exactly_one(first: str, second: str, kinds: tuple[str, str]) -> dict[str, Any]:
    """JSON Schema for "exactly one of the two fields, not null" (null counts as absent)."""
    return {
        "oneOf": [
            {"required": [name], "properties": {name: {"type": kind}}}
            for name, kind in zip((first, second), kinds, strict=True)
        ]
    }


class _Problem(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


_STATE_KEY = "digitloop_input_problem"


def request_problem(request: Request) -> tuple[HTTPStatus, str] | None:
    """The status and message of a body that could not be parsed, if any."""
    return getattr(request.state, _STATE_KEY, None)


class JsonInput(IODescriptor):
    """A JSON body, whatever Content-Type the client claims; problems are kept, not raised."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @classmethod
    async def from_http_request(cls, request: Request, serde: Any) -> IODescriptor:
        try:
            return await cls._parse(request)
        except _Problem as problem:
            # request.state lives in the ASGI scope, which the API's context shares.
            setattr(request.state, _STATE_KEY, (problem.status, str(problem)))
            return cls.model_construct(**dict.fromkeys(cls.model_fields))

    @classmethod
    async def _parse(cls, request: Request) -> IODescriptor:
        return cls._validated(await _read_body(request) or b"{}", what="a JSON object")

    @classmethod
    def _validated(cls, data: bytes | dict[str, Any], what: str) -> IODescriptor:
        """The model of ``data`` (JSON text, or the fields of a form), or a 400/413 problem."""
        try:
            if isinstance(data, bytes):
                return cls.model_validate_json(data)
            return cls.model_validate(data)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            status = (
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE
                if first["type"] == "too_long"
                else HTTPStatus.BAD_REQUEST
            )
            raise _Problem(status, f"send {what}: {_describe(cls, first)}") from exc


class FeedbackInput(JsonInput):
    prediction_id: str = Field(
        pattern=PREDICTION_ID.pattern, description="The id a /predict answer gave."
    )
    label: int = Field(ge=0, le=9, description="The true digit, 0-9.")
    source: str = Field(
        default="user",
        min_length=1,
        max_length=64,
        description="Who labelled it (user, simulator, ...), 1-64 characters.",
    )

    _whole_label = field_validator("label", mode="before")(_whole)


class ReloadInput(JsonInput):
    stable_model: str | None = Field(
        default=None, pattern=MODEL_REF, description="Version or alias for stable."
    )
    canary_model: str | None = Field(
        default=None,
        pattern=r"^$|" + MODEL_REF,
        description='Version or alias for the canary; "" removes the canary.',
    )
    canary_weight: int | None = Field(
        default=None, ge=0, le=100, description="Percent of traffic to the canary, 0-100."
    )

    _whole_weight = field_validator("canary_weight", mode="before")(_whole)


class ImageInput(JsonInput):
    """Base: the parsing shared by both image routes."""

    multipart_field: ClassVar[str] = "image"
    model_config = ConfigDict(
        extra="forbid", strict=True, val_json_bytes="base64", ser_json_bytes="base64"
    )

    @classmethod
    async def _parse(cls, request: Request) -> IODescriptor:
        media = request.headers.get("content-type", "").split(";")[0].strip().lower()
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise _Problem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                f"the request is {declared} bytes; at most {MAX_BODY_BYTES}",
            )
        if media.startswith(IMAGE_TYPES):
            return cls._from_images([await _read_body(request)])
        if media == "multipart/form-data":
            try:
                async with request.form(max_files=1024, max_fields=16) as form:
                    uploads = form.getlist(cls.multipart_field)
                    if not uploads:
                        raise _Problem(
                            HTTPStatus.BAD_REQUEST,
                            f"no file in multipart field `{cls.multipart_field}`",
                        )
                    if not all(isinstance(u, UploadFile) for u in uploads):
                        # A text field is not a file: its value is a string, not an image.
                        raise _Problem(
                            HTTPStatus.BAD_REQUEST,
                            f"multipart field `{cls.multipart_field}` holds text, not a file: "
                            "send each image as a file part (with a filename)",
                        )
                    files = [await u.read() for u in uploads]
            except _Problem:
                raise
            except Exception as exc:  # starlette raises several kinds for a broken form
                raise _Problem(HTTPStatus.BAD_REQUEST, f"unreadable multipart body: {exc}") from exc
            return cls._from_images(files)
        try:
            return await super()._parse(request)
        except _Problem as exc:
            hint = (
                f"send an image (image/png, image/jpeg or multipart field "
                f"`{cls.multipart_field}`) or JSON with `pixels`"
            )
            raise _Problem(exc.status, f"{hint}; {exc}") from exc

    @classmethod
    def _from_images(cls, files: list[bytes]) -> ImageInput:
        raise NotImplementedError


class PredictInput(ImageInput):
    """One drawing: PNG/JPEG bytes (``image``), or ``pixels``, a 2-D array; exactly one."""

    model_config = ConfigDict(
        json_schema_extra=_exactly_one("image", "pixels", ("string", "array"))
    )
    image: ImageBytes | None = Field(default=None, description="PNG or JPEG bytes, base64.")
    pixels: Pixels | None = None

    @model_validator(mode="after")
    def _one_drawing(self) -> PredictInput:
        if (self.image is None) == (self.pixels is None):
            raise ValueError(
                "send exactly one of an image (PNG/JPEG body, multipart `image`, or "
                "base64 `image` in JSON) or `pixels` (a 2-D array, JSON)"
            )
        return self

    @classmethod
    def _from_images(cls, files: list[bytes]) -> PredictInput:
        if len(files) != 1:
            raise _Problem(HTTPStatus.BAD_REQUEST, f"send one image, got {len(files)}")
        return cls._validated({"image": files[0]}, what="one image")


class PredictBatchInput(ImageInput):
    """Many drawings: files in ``images`` (repeated), or ``pixels``, a list of 2-D arrays."""

    multipart_field: ClassVar[str] = "images"
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

    @classmethod
    def _from_images(cls, files: list[bytes]) -> PredictBatchInput:
        return cls._validated({"images": files}, what=f"1-{MAX_BATCH} images")


async def _read_body(request: Request) -> bytes:
    """The body, refusing to read past MAX_BODY_BYTES (no Content-Length is trusted)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _Problem(
                HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"the request is over {MAX_BODY_BYTES} bytes"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(model: type[JsonInput], error: dict[str, Any]) -> str:
    """One validation error in words: where, what, and what the field takes."""
    location = [str(part) for part in error.get("loc", ())]
    where = ".".join(location) or "body"
    message = error.get("msg")
    if error.get("type") == "string_pattern_mismatch":
        message = "String is not of the form this field takes"
    text = f"{where}: {message}"
    field = model.model_fields.get(location[0]) if location else None
    if field is not None and field.description:
        text += f" ({location[0]}: {field.description})"
    return text[:300]
