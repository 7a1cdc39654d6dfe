"""Request bodies of every route, parsed by us rather than by BentoML.

One route takes an image three ways: a raw ``image/png`` (or jpeg) body, a multipart
upload (field ``image``, or ``images`` repeated for a batch), or JSON ``{"pixels": ...}``.
BentoML 1.4 cannot declare an optional file field, and its multipart path writes each
upload to a temporary file; parsing here reads the bytes once, in memory, with a size
bound. ``/predict`` also reads ``?draft=true``, since an image body has no field for it.
JSON routes take JSON whatever the Content-Type says (BentoML would try, and fail, to parse
a form). A body we cannot read does not raise here (BentoML would answer
a bare 500): the problem and its status go to ``request.state`` and the API answers it
like every other error (:func:`request_problem`).

The request models are the contract's (:mod:`contracts.api`): every bound (a label 0-9, the
prediction id's format, a drawing's size, the batch limit) is a constraint of a field there,
and the same model validates the request and describes it in the OpenAPI document
(:mod:`services.openapi`). The classes here add only the parsing of HTTP bodies, as BentoML
IO descriptors. Every way in (JSON, multipart, raw bytes) is validated by the contract, in
strict mode: a number is not a string, nor a boolean a number, as the schema says. A body
that breaks it answers 400, or 413 for a list longer than its bound (too many images, too
many pixels). What a schema cannot say (that bytes decode to an image, that a drawing
holds ink) is the service's to check, and answers 422.
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any, ClassVar

from _bentoml_sdk.io_models import IODescriptor
from pydantic import BaseModel, ValidationError, model_validator
from pydantic_core import PydanticCustomError
from starlette.datastructures import UploadFile
from starlette.requests import Request

from contracts.api import FeedbackInput, PredictBatchInput, PredictInput, ReloadInput
from services.settings import ServingSettings

_SETTINGS = ServingSettings()
# The largest body either route reads; one image is bounded again by max_image_bytes.
MAX_BODY_BYTES = _SETTINGS.max_body_bytes
IMAGE_TYPES = ("image/", "application/octet-stream")
# /predict's query parameter: the JSON field of the same name, for bodies that are an image.
DRAFT_PARAMETER = "draft"
# The most images in one /predict_batch: the service's setting (DIGITLOOP_MAX_BATCH).
BATCH_LIMIT = _SETTINGS.max_batch
# A "1" drawn in 8x8 pixels: the document's example (services/openapi.py), predicted.
EXAMPLE_DRAWING = [[255 if 3 <= x <= 4 and 1 <= y <= 6 else 0 for x in range(8)] for y in range(8)]


class _Problem(Exception):
    def __init__(self, status: HTTPStatus, message: str) -> None:
        super().__init__(message)
        self.status = status


_STATE_KEY = "digitloop_input_problem"


def request_problem(request: Request) -> tuple[HTTPStatus, str] | None:
    """The status and message of a body that could not be parsed, if any."""
    return getattr(request.state, _STATE_KEY, None)


class JsonBody(IODescriptor):
    """A JSON body, whatever Content-Type the client claims; problems are kept, not raised.

    A route's input is this parsing mixed into the contract's model of its body.
    """

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


class FeedbackBody(JsonBody, FeedbackInput):
    """How /feedback reads its body."""


class ReloadBody(JsonBody, ReloadInput):
    """How /admin/reload reads its body."""


class ImageBody(JsonBody):
    """Base: the parsing shared by both image routes."""

    multipart_field: ClassVar[str] = "image"

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
    def _from_images(cls, files: list[bytes]) -> ImageBody:
        raise NotImplementedError


class PredictBody(ImageBody, PredictInput):
    """How /predict reads its body, and its query parameter ``draft``."""

    @classmethod
    async def _parse(cls, request: Request) -> IODescriptor:
        draft = draft_query(request)
        body = await super()._parse(request)
        # An image body has no field of its own for it: the query says draft for any body.
        return body.model_copy(update={"draft": True}) if draft else body

    @classmethod
    def _from_images(cls, files: list[bytes]) -> PredictBody:
        if len(files) != 1:
            raise _Problem(HTTPStatus.BAD_REQUEST, f"send one image, got {len(files)}")
        return cls._validated({"image": files[0]}, what="one image")


class PredictBatchBody(ImageBody, PredictBatchInput):
    """How /predict_batch reads its body."""

    multipart_field: ClassVar[str] = "images"

    @model_validator(mode="after")
    def _within_this_services_limit(self) -> PredictBatchBody:
        """A service may take fewer images than the contract's limit (its settings say)."""
        sent = len(self.images if self.images is not None else self.pixels or [])
        if sent > BATCH_LIMIT:
            raise PydanticCustomError(
                "too_long",
                "this service takes at most {limit} images in one request, not {sent}",
                {"limit": BATCH_LIMIT, "sent": sent},
            )
        return self

    @classmethod
    def _from_images(cls, files: list[bytes]) -> PredictBatchBody:
        return cls._validated({"images": files}, what=f"1-{BATCH_LIMIT} images")


def draft_query(request: Request) -> bool:
    """The query parameter ``draft``: ``true`` or ``false`` as JSON writes them, once."""
    values = request.query_params.getlist(DRAFT_PARAMETER)
    if not values:
        return False
    if len(values) > 1 or values[0] not in ("true", "false"):
        raise _Problem(
            HTTPStatus.BAD_REQUEST,
            f"query parameter `{DRAFT_PARAMETER}` takes true or false, once; got {values}",
        )
    return values[0] == "true"


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


def _describe(model: type[BaseModel], error: dict[str, Any]) -> str:
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
