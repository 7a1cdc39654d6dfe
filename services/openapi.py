"""The service's OpenAPI document, made to tell the truth (served at ``/docs.json``).

BentoML 1.4 builds the document of a new-style service from each API's input and output
models (``_bentoml_sdk.service.openapi.generate_spec``): every POST route gets 200, 400, 404
and 500 with BentoML's own error bodies, the request is JSON only, and a field's bounds
are dropped where its schema is nullable. This service answers other statuses, takes images
three ways and parses its bodies itself (:mod:`services.inputs`), so :func:`document` keeps
BentoML's frame (info, tags, operation ids) and writes each route's operation from:

- the request models of the HTTP contract (:mod:`contracts.api`), the same models that
  validate the requests, so every bound (label 0-9, the prediction id's format, a drawing's
  size, the batch limit) is declared once, in a field, and the multipart form reuses the JSON
  field's bounds;
- the contract's answer models, which the service dumps and the client parses;
- :data:`ERRORS`, the statuses each route answers besides 200, all with ``{"error": ...}``.

The schemathesis run in ``tests/integration/test_openapi.py`` holds the service to it.
"""

from __future__ import annotations

import copy
import inspect
from http import HTTPStatus
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from contracts.api import (
    MAX_SIDE,
    TRACK_HEADER,
    TRACKS,
    BatchAnswer,
    ErrorAnswer,
    FeedbackAck,
    FeedbackInput,
    ImageError,
    ModelInfo,
    PredictBatchInput,
    PredictInput,
    Prediction,
    ReloadInput,
)
from services.inputs import BATCH_LIMIT, DRAFT_PARAMETER, EXAMPLE_DRAWING, MAX_BODY_BYTES
from services.settings import ServingSettings

OPENAPI_VERSION = "3.1.0"  # JSON Schema 2020-12, as pydantic writes it
REF = "#/components/schemas/{model}"
ERROR_REF = {"$ref": REF.format(model="Error")}
ADMIN_SCHEME = "adminToken"

_BODY = (
    "The body breaks the request schema: not JSON, a field missing, unknown, of the wrong "
    "type or out of its bounds"
)
_ENV = ServingSettings.env_name
_TOO_LARGE = f"The body is over {MAX_BODY_BYTES} bytes ({_ENV('max_body_bytes')})"
_IMAGE_BYTES = ServingSettings.model_fields["max_image_bytes"].default
_FAULT = "A fault of the service, not of the request (none is known); the log has it."

# Every status each route answers besides 200, and why. Errors of the service come from
# services/errors.py: ServingError subclasses carry their status, STATUS_OF maps the rest.
ERRORS: dict[str, dict[int, str]] = {
    "/predict": {
        400: f"{_BODY}; not exactly one of an image and `pixels`; more than one file in "
        "`image`, or text in place of a file; a broken multipart form; "
        f"{TRACK_HEADER} neither stable nor canary, or canary while no canary is set; "
        f"query parameter `{DRAFT_PARAMETER}` other than true or false.",
        413: f"{_TOO_LARGE}; the image is over {_ENV('max_image_bytes')} ({_IMAGE_BYTES} "
        f"bytes by default); `pixels` has more than {MAX_SIDE} rows or columns.",
        422: "The request is well formed but its drawing cannot be used: the bytes are not "
        "a readable image, the rows of `pixels` differ in length, or it has too little ink "
        "to be a digit.",
        503: "No model is loaded yet (see /readyz).",
        500: _FAULT,
    },
    "/predict_batch": {
        400: f"{_BODY}; not exactly one of `images` and `pixels`; text in place of a file; "
        f"a broken multipart form; {TRACK_HEADER} neither stable nor canary, or canary "
        "while no canary is set.",
        413: f"{_TOO_LARGE}; more than {BATCH_LIMIT} images; a drawing in `pixels` has more "
        f"than {MAX_SIDE} rows or columns.",
        503: "No model is loaded yet (see /readyz).",
        500: _FAULT,
    },
    "/feedback": {
        400: f"{_BODY} (a label outside 0-9, an id not of the form /predict gives).",
        404: "No such prediction: the id is well formed but not one this service signed.",
        409: "Feedback for this prediction was already recorded.",
        422: "The id is a draft's (/predict with draft): drafts are not logged and take no "
        "feedback; send the final drawing without draft and give feedback on that id.",
        413: f"{_TOO_LARGE}.",
        503: "Not recorded: the store is down and the local spool is full; retry later.",
        500: _FAULT,
    },
    "/admin/reload": {
        400: f"{_BODY}.",
        401: "No `Authorization: Bearer <token>` header.",
        403: f"A wrong token, or the admin endpoints are off (no {_ENV('admin_token')}).",
        404: "No such model version or alias in the registry.",
        413: f"{_TOO_LARGE}.",
        500: _FAULT,
    },
    "/model": {
        503: "No model is loaded yet (see /readyz).",
        500: _FAULT,
    },
}


def document(generated: dict[str, Any]) -> dict[str, Any]:
    """BentoML's generated document (``svc.openapi_spec.asdict()``) made truthful."""
    spec = copy.deepcopy(generated)
    paths = spec["paths"]
    spec["openapi"] = OPENAPI_VERSION
    spec["components"] = {
        "schemas": {
            **_schemas(Prediction, ImageError, BatchAnswer, FeedbackAck, ModelInfo),
            "Error": ErrorAnswer.model_json_schema(mode="serialization"),
        },
        "securitySchemes": {
            ADMIN_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "description": f"{_ENV('admin_token')} (make dev writes .digitloop/admin.token).",
            }
        },
    }

    def post(path: str, **operation: Any) -> None:
        made = paths[path]["post"]
        made["description"] = inspect.cleandoc(made.get("description") or "")
        made.update(operation)

    track = {
        "name": TRACK_HEADER,
        "in": "header",
        "required": False,
        "description": "Pin the request to a track; canary only while one is set. "
        "Without it the canary answers exactly its weight of every 100 requests.",
        "schema": {"type": "string", "enum": list(TRACKS)},
    }
    draft = {
        "name": DRAFT_PARAMETER,
        "in": "query",
        "required": False,
        "description": "true: a draft, as the JSON field `draft` says (answered, not logged, "
        "its id takes no feedback), for any body; either one true makes a draft.",
        "schema": {"type": "boolean", "default": False},
    }
    post(
        "/predict",
        parameters=[track, draft],
        requestBody=_body(
            PredictInput,
            multipart={
                "type": "object",
                "required": ["image"],
                "properties": {"image": _file(PredictInput, "image")},
            },
            raw=("image/png", "image/jpeg", "application/octet-stream"),
            example={"pixels": EXAMPLE_DRAWING},
        ),
        responses=_responses(
            "/predict",
            _ref(Prediction),
            links={
                "feedback": {
                    "operationId": paths["/feedback"]["post"]["operationId"],
                    "description": "Correct or confirm this prediction.",
                    "requestBody": {"prediction_id": "$response.body#/prediction_id"},
                }
            },
        ),
    )
    post(
        "/predict_batch",
        parameters=[track],
        requestBody=_body(
            PredictBatchInput,
            multipart={
                "type": "object",
                "required": ["images"],
                "properties": {"images": _file(PredictBatchInput, "images")},
            },
            # The second drawing has no ink: its answer is an error, the first's a prediction.
            example={"pixels": [EXAMPLE_DRAWING, [[0] * 8] * 8]},
        ),
        responses=_responses("/predict_batch", _ref(BatchAnswer)),
    )
    post(
        "/feedback",
        requestBody=_body(FeedbackInput),
        responses=_responses("/feedback", _ref(FeedbackAck)),
    )
    post(
        "/admin/reload",
        security=[{ADMIN_SCHEME: []}],
        requestBody={**_body(ReloadInput), "required": False},
        responses=_responses("/admin/reload", _ref(ModelInfo)),
    )
    model = paths["/model"]["get"]
    model["responses"] = _responses("/model", _ref(ModelInfo))

    text = {"text/plain": {"schema": {"type": "string"}}}
    for path in ("/livez", "/healthz", "/readyz", "/metrics"):
        paths[path]["get"]["responses"] = {"200": {"description": "OK", "content": text}}
    paths["/readyz"]["get"]["responses"]["503"] = {
        "description": "Not ready: no model loaded yet.",
        "content": text,
    }
    return spec


def _schemas(*answers: type[BaseModel]) -> dict[str, Any]:
    """Components: the request models as they validate, the answers as they serialise."""
    requests = (PredictInput, PredictBatchInput, FeedbackInput, ReloadInput)
    _, top = models_json_schema(
        [(model, "validation") for model in requests]
        + [(model, "serialization") for model in answers],
        ref_template=REF,
    )
    return top["$defs"]


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _file(model: type[BaseModel], name: str) -> dict[str, Any]:
    """A JSON field of base64 images as a multipart field of files, with the same bounds."""
    field = model.model_json_schema()["properties"][name]
    schema = next(s for s in field.get("anyOf", [field]) if s.get("type") != "null")
    file = {"type": "string", "format": "binary", "description": "A PNG or JPEG file."}
    if schema.get("type") != "array":
        return file
    bounds = {key: schema[key] for key in ("minItems", "maxItems") if key in schema}
    return {
        "type": "array",
        "items": file,
        **bounds,
        "description": "PNG or JPEG files, one part each, all named "
        f"`{name}` ({bounds.get('minItems', 0)}-{bounds.get('maxItems', 'any')}).",
    }


def _body(
    model: type[BaseModel],
    multipart: dict[str, Any] | None = None,
    raw: tuple[str, ...] = (),
    example: dict[str, Any] | None = None,
) -> dict[str, Any]:
    content: dict[str, Any] = {"application/json": {"schema": _ref(model)}}
    if example is not None:
        content["application/json"]["example"] = example
    if multipart is not None:
        content["multipart/form-data"] = {"schema": multipart}
    for media_type in raw:
        content[media_type] = {
            "schema": {"type": "string", "format": "binary", "description": "The image's bytes."}
        }
    return {"required": True, "content": content}


def _responses(
    route: str, answer: dict[str, Any], links: dict[str, Any] | None = None
) -> dict[str, Any]:
    ok: dict[str, Any] = {
        "description": "OK",
        "content": {"application/json": {"schema": answer}},
    }
    if links:
        ok["links"] = links
    responses = {"200": ok}
    for status, why in ERRORS[route].items():
        responses[str(status)] = {
            "description": f"{HTTPStatus(status).phrase}: {why}",
            "content": {"application/json": {"schema": ERROR_REF}},
        }
    return responses
