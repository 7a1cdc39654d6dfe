"""Request bodies of every route, parsed by us rather than by BentoML.

One route takes an image three ways: a raw ``image/png`` (or jpeg) body, a multipart
upload (field ``image``, or ``images`` repeated for a batch), or JSON ``{"pixels": ...}``.
BentoML 1.4 cannot declare an optional file field, and its multipart path writes each
upload to a temporary file; parsing here reads the bytes once, in memory, with a size
bound; JSON routes take JSON whatever the Content-Type says (BentoML would try, and
fail, to parse a form). A body we cannot read does not raise here (BentoML would answer
a bare 500): the problem and its status go to ``request.state`` and the API answers it
like every other error (:func:`request_problem`).
"""

from __future__ import annotations

import json
import os
from http import HTTPStatus
from typing import Any, ClassVar

from _bentoml_sdk.io_models import IODescriptor
from pydantic import ConfigDict, Field, ValidationError
from starlette.requests import Request

# The largest body either route reads; one image is bounded again by max_image_bytes.
MAX_BODY_BYTES = int(os.environ.get("DIGITLOOP_MAX_BODY_BYTES", str(64 * 2_000_000)))
IMAGE_TYPES = ("image/", "application/octet-stream")


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

    model_config = ConfigDict(extra="forbid")

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
        body = await _read_body(request)
        try:
            return cls.model_validate(json.loads(body or b"{}"))
        except (ValueError, ValidationError) as exc:
            raise _Problem(HTTPStatus.BAD_REQUEST, f"send a JSON object: {_short(exc)}") from exc


class FeedbackInput(JsonInput):
    prediction_id: str = Field(description="The id a /predict answer gave.")
    label: int = Field(description="The true digit, 0-9.")
    source: str = Field(default="user", description="Who labelled it (user, simulator, ...).")


class ReloadInput(JsonInput):
    stable_model: str | None = Field(default=None, description="Version or alias for stable.")
    canary_model: str | None = Field(
        default=None, description='Version or alias for the canary; "" removes the canary.'
    )
    canary_weight: int | None = Field(default=None, description="Percent of traffic, 0-100.")


class ImageInput(JsonInput):
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
                    files = [
                        await u.read() if hasattr(u, "read") else str(u).encode() for u in uploads
                    ]
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
    """One image: PNG/JPEG bytes, or ``pixels``, a 2-D array (28x28 or any HxW)."""

    model_config = ConfigDict(extra="forbid", val_json_bytes="base64", ser_json_bytes="base64")
    image: bytes | None = Field(default=None, description="PNG or JPEG bytes (base64 in JSON).")
    pixels: list[list[float]] | None = Field(
        default=None, description="A grey image as rows of numbers (0-255 or 0-1)."
    )

    @classmethod
    def _from_images(cls, files: list[bytes]) -> PredictInput:
        if len(files) != 1:
            raise _Problem(HTTPStatus.BAD_REQUEST, f"send one image, got {len(files)}")
        return cls.model_construct(image=files[0], pixels=None)


class PredictBatchInput(ImageInput):
    """Many images: multipart files in ``images`` (repeated), or ``pixels``, a list of arrays."""

    multipart_field: ClassVar[str] = "images"
    model_config = ConfigDict(extra="forbid", val_json_bytes="base64", ser_json_bytes="base64")
    images: list[bytes] | None = Field(default=None, description="PNG or JPEG files.")
    pixels: list[list[list[float]]] | None = Field(
        default=None, description="Grey images, each as rows of numbers."
    )

    @classmethod
    def _from_images(cls, files: list[bytes]) -> PredictBatchInput:
        return cls.model_construct(images=files, pixels=None)


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


def _short(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "body"
        return f"{where}: {first.get('msg')}"
    return str(exc)[:200]
