"""The digitloop prediction service: one BentoML service class.

Routes (DESIGN.md, "Serving HTTP API"): ``/predict``, ``/predict_batch``, ``/feedback``,
``/model``, ``/admin/reload``, plus BentoML's ``/livez``, ``/readyz`` and ``/metrics``.
The model lifecycle (load in the background, ready flag, hot reload) is in
:class:`ModelSlots`; per-request work in :mod:`services.inference`; storage in
:mod:`services.store`. Every expected error answers ``{"error": ...}`` with its 4xx;
``/predict_batch`` answers each image, an error entry for one it cannot predict. Requests
and answers are the models of the HTTP contract (:mod:`contracts.api`), read from HTTP bodies
by :mod:`services.inputs`; ``/docs.json`` serves the OpenAPI document of all this
(:mod:`services.openapi`).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import threading
import time
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import bentoml
from bentoml import get_current_service  # bound once: bentoml.<name> is a lazy module lookup
from fastapi import FastAPI
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from contracts.api import (
    TRACK_HEADER,
    BatchAnswer,
    ErrorAnswer,
    FeedbackAck,
    ImageError,
    ModelInfo,
    Prediction,
)
from contracts.errors import InvalidImageError
from services.errors import (
    BadRequest,
    DuplicateFeedbackError,
    FeedbackNotDurable,
    Forbidden,
    NotReady,
    RequestProblem,
    Unauthorized,
    status_of,
)
from services.inputs import (
    FeedbackBody,
    PredictBatchBody,
    PredictBody,
    ReloadBody,
    request_problem,
)
from services.settings import ServingSettings

log = logging.getLogger("digitloop.service")

# Worker processes are fixed when BentoML reads the class, before any worker starts.
WORKERS = ServingSettings().workers


# GET routes: BentoML's APIs are POST only, so /model is a FastAPI route on the service
# class (BentoML's documented way to add plain HTTP routes that see the instance).
info_app = FastAPI(title="digitloop info", docs_url=None, redoc_url=None, openapi_url=None)


@bentoml.service(
    name="digitloop",
    workers=WORKERS,
    traffic={"timeout": 30},
    logging={"access": {"enabled": False}},
    # OpenTelemetry builds ~5 spans per request even unsampled: 2 ms of CPU per request
    # measured on /predict (services/bench). Our own metrics cover these routes.
    tracing={"excluded_urls": ["/predict", "/feedback"]},
)
@bentoml.asgi_app(info_app, path="/")
class DigitService:
    """Predicts hand-drawn digits and records every prediction and correction."""

    def __init__(self) -> None:
        import torch

        from model.registry import Registry
        from services.ids import PredictionIds
        from services.routing import TrafficSplit
        from services.slots import ModelSlots
        from services.store.backends import StoreSettings, open_store
        from services.store.writers import FeedbackWriter, PredictionLog

        self.settings = ServingSettings()
        torch.set_num_threads(self.settings.torch_threads)
        store_settings = StoreSettings()
        self.metrics = _metrics()
        self.ids = PredictionIds(self.settings.id_secret())
        self.split = TrafficSplit()
        self.slots = ModelSlots(self.settings, Registry, self.split, self.metrics)
        self.slots.start()

        store = open_store(store_settings)
        spool = store_settings.spool_path
        self.predictions_log = PredictionLog(
            store,
            pod=f"{store_settings.pod_name}-{os.getpid()}",
            flush_interval_s=store_settings.flush_interval_s,
            spool_dir=spool,
            on_error=self._store_error,
        )
        self.feedback_writer = FeedbackWriter(
            store,
            spool_dir=spool / "feedback",
            max_spooled=store_settings.spool_max_records,
            on_error=self._store_error,
            on_depth=self.metrics.spool_depth.set,
        )
        self.predictions_log.start()
        self.feedback_writer.start()
        self._admin_lock = threading.Lock()
        log.info("digitloop service starting: store %s", store.description)

    def __is_ready__(self) -> bool:
        return self.slots.ready

    @bentoml.on_shutdown
    def close(self) -> None:
        """Flush the predictions log and stop the spool's replay (SIGTERM, Ctrl-C)."""
        self.predictions_log.close()
        self.feedback_writer.close()
        self.slots.stop()

    # -- routes ------------------------------------------------------------------------

    @bentoml.api(route="/predict", input_spec=PredictBody)
    async def predict(
        self,
        image: bytes | None = None,
        pixels: list[list[float]] | None = None,
        draft: bool = False,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> Prediction:
        """Predict one digit: PNG/JPEG bytes (raw body or multipart `image`) or `pixels`.

        A draft (`draft: true`, or `?draft=true`) is answered alike but not logged.
        """
        # Served by DirectPredict in a running server; this is the same answer for BentoML's
        # own callers (its clients, `to_async`) and the document of the route.
        response = self.answer_predict(
            ctx.request if ctx is not None else None, image, pixels, draft
        )
        if ctx is not None:
            ctx.response.status_code = response.status_code  # BentoML copies it onto the response
        return response

    async def predict_request(self, request: Request) -> Response:
        """POST /predict from the HTTP request itself: the body read as the API reads it."""
        body = await PredictBody.from_http_request(request, None)
        return self.answer_predict(request, body.image, body.pixels, body.draft)  # type: ignore[attr-defined]

    def answer_predict(
        self,
        request: Request | None,
        image: bytes | None,
        pixels: list[list[float]] | None,
        draft: bool,
    ) -> Response:
        """The answer of /predict, or its error, whichever way the request came in."""
        started = time.perf_counter()
        try:
            _raise_request_problem(request)
            digit = self._digit(image if image is not None else pixels)
            pinned = request.headers.get(TRACK_HEADER) if request is not None else None
            answer = self._predict(digit[None], self._pick_track(pinned), started, draft=draft)[0]
        except Exception as exc:  # every error becomes a response
            return self._error(None, "/predict", started, exc)
        self._observe("/predict", started)
        return _json(answer)

    @bentoml.api(route="/predict_batch", input_spec=PredictBatchBody)
    async def predict_batch(
        self,
        images: list[bytes] | None = None,
        pixels: list[list[list[float]]] | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> BatchAnswer:
        """Predict many digits in one forward pass: multipart `images` or `pixels`.

        One answer per image, in order: a prediction, or for an image that cannot be
        predicted (not readable, too little ink, too large) an error with its index and the
        status /predict would answer; the others are predicted all the same.
        """
        import numpy as np

        started = time.perf_counter()
        try:
            _raise_problem(ctx)
            picked = self._pick(ctx)
            answers: list[Prediction | ImageError | None] = []
            digits = []
            for index, item in enumerate(images if images is not None else pixels or []):
                try:
                    digits.append(self._digit(item))
                except Exception as exc:
                    status = status_of(exc)
                    if status is None:
                        raise  # a fault of ours, not of the image: the whole request is 500
                    answers.append(ImageError(index=index, status=int(status), error=str(exc)))
                else:
                    answers.append(None)
            predicted = iter(self._predict(np.stack(digits), picked, started) if digits else [])
            answer = [item if item is not None else next(predicted) for item in answers]
        except Exception as exc:  # every error becomes a response
            return self._error(ctx, "/predict_batch", started, exc)
        self._observe("/predict_batch", started)
        return _json(BatchAnswer(answer))

    @bentoml.api(route="/feedback", input_spec=FeedbackBody)
    async def feedback(
        self,
        prediction_id: str,
        label: int,
        source: str,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> FeedbackAck:
        """Record the true digit of a prediction; answers 2xx once the record is durable."""
        from contracts.records import FeedbackRecord
        from services.store.backends import StoreUnavailable
        from services.store.writers import DuplicateFeedback, SpoolFull

        started = time.perf_counter()
        try:
            _raise_problem(ctx)  # the bounds (label 0-9, id format, source) are the contract's
            ref = self.ids.parse_for_feedback(prediction_id)
            record = FeedbackRecord(
                prediction_id=prediction_id, label=label, ts=datetime.now(UTC), source=source
            )
            try:
                durable = await asyncio.to_thread(self.feedback_writer.write, record)
            except DuplicateFeedback as exc:
                raise DuplicateFeedbackError(
                    f"feedback for {prediction_id} was already recorded"
                ) from exc
            except (SpoolFull, StoreUnavailable) as exc:
                # Not acknowledged, so nothing accepted is lost: the client retries.
                raise FeedbackNotDurable(
                    f"the feedback could not be made durable ({exc}); retry later"
                ) from exc
            self.metrics.child("feedback", ref.model_version, ref.track).inc()
            if label != ref.label:
                self.metrics.child("corrections", ref.model_version, ref.track).inc()
        except Exception as exc:
            return self._error(ctx, "/feedback", started, exc)
        self._observe("/feedback", started)
        return _json(
            FeedbackAck(
                prediction_id=prediction_id,
                label=label,
                correct=label == ref.label,
                durable=durable,
            )
        )

    @info_app.get("/model")
    def model(self) -> Response:
        """The model version, alias and training data of each track, and the split."""
        started = time.perf_counter()
        try:
            if not self.slots.ready:
                raise NotReady("no model loaded yet; see /readyz")
            answer = _json(self.slots.describe())
        except Exception as exc:  # every error becomes a response
            return self._error(None, "/model", started, exc)
        self._observe("/model", started)
        return answer

    @bentoml.api(route="/admin/reload", input_spec=ReloadBody)
    def reload(
        self,
        stable_model: str | None = None,
        canary_model: str | None = None,
        canary_weight: int | None = None,
        ctx: bentoml.Context = None,  # type: ignore[assignment]
    ) -> ModelInfo:
        """Serve other versions without a restart (bearer token). `canary_model: ""` removes it."""
        started = time.perf_counter()
        try:
            self._authorize(ctx)
            _raise_problem(ctx)
            with self._admin_lock:
                self.slots.apply(
                    stable_model=stable_model,
                    canary_model=canary_model,
                    canary_weight=canary_weight,
                )
            answer = self.slots.describe()
        except Exception as exc:
            return self._error(ctx, "/admin/reload", started, exc)
        self._observe("/admin/reload", started)
        return _json(answer)

    # -- helpers -----------------------------------------------------------------------

    def _digit(self, drawing: bytes | list[list[float]]):
        """One image (PNG/JPEG bytes, or rows of pixels) as the 28x28 digit the network takes.

        The request's shape was checked by its model (services/inputs.py); what is left is
        the content: bytes that do not decode, rows of unequal length, no ink (422), an
        image over the size limit (413).
        """
        from services.inference import array_to_pixels, image_bytes_to_pixels

        if isinstance(drawing, bytes):
            return image_bytes_to_pixels(drawing, self.settings.max_image_bytes)
        if len({len(row) for row in drawing}) > 1:
            raise InvalidImageError(
                "the rows of `pixels` differ in length: send a rectangular array"
            )
        return array_to_pixels(drawing)

    def _pick(self, ctx: bentoml.Context | None):
        """The track and model that answer this request (header X-Digitloop-Track pins it)."""
        return self._pick_track(ctx.request.headers.get(TRACK_HEADER) if ctx is not None else None)

    def _pick_track(self, pinned: str | None):
        if pinned is not None and not pinned.strip():
            # Sent but blank: a pin that names no track, not the absence of one.
            raise BadRequest(f"{TRACK_HEADER} must be 'stable' or 'canary', got ''")
        return self.slots.pick(pinned)

    def _predict(self, digits, picked, started: float, draft: bool = False) -> list[Prediction]:
        from contracts.records import PredictionRecord

        track, classifier = picked
        version = classifier.version
        probabilities, scores, unusual = classifier.answer(digits)
        labels = probabilities.argmax(axis=1)
        novelty = [None] * len(digits) if scores is None else [float(s) for s in scores]
        now = datetime.now(UTC)
        latency_ms = (time.perf_counter() - started) * 1000
        answers = []
        for digit, probs, label, score, odd in zip(
            digits, probabilities, labels, novelty, unusual, strict=True
        ):
            prediction_id = self.ids.new(track, version, int(label), draft=draft)
            answers.append(
                Prediction(
                    prediction_id=prediction_id,
                    label=int(label),
                    probabilities=[round(float(p), 6) for p in probs],
                    model_version=version,
                    track=track,
                    draft=draft,
                    novelty=None if score is None else round(score, 4),
                    unusual=bool(odd),
                )
            )
            if draft:
                # A drawing in progress is no prediction: the log, its drift and quality, and
                # the prediction metrics never see it.
                self.metrics.child("drafts", version, track).inc()
                continue
            self.predictions_log.append(
                PredictionRecord(
                    prediction_id=prediction_id,
                    ts=now,
                    model_version=version,
                    track=track,
                    image=digit,
                    probabilities=probs,
                    label=int(label),
                    latency_ms=latency_ms,
                    novelty=score,
                )
            )
            if odd:
                self.metrics.child("unusual", version, track).inc()
            self.metrics.child("predictions", str(label), version, track).inc()
            self.metrics.child("confidence", version, track).observe(float(probs[label]))
        return answers

    def _authorize(self, ctx: bentoml.Context) -> None:
        import hmac

        expected = self.settings.admin_secret()
        if expected is None:
            admin_token = ServingSettings.env_name("admin_token")
            raise Forbidden(f"admin endpoints are off: set {admin_token} to enable them")
        header = ctx.request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise Unauthorized("send `Authorization: Bearer <admin token>`")
        if not hmac.compare_digest(token.encode(), expected.encode()):
            raise Forbidden("wrong admin token")

    def _store_error(self, kind: str, exc: Exception) -> None:
        self.metrics.store_errors.labels(kind=kind).inc()
        log.warning("store error (%s): %s", kind, exc)

    def _observe(self, route: str, started: float, status: int = 200) -> None:
        self.metrics.child("requests", route, str(status)).inc()
        self.metrics.child("latency", route, str(status)).observe(time.perf_counter() - started)

    def _error(self, ctx: bentoml.Context, route: str, started: float, exc: Exception) -> Response:
        status = status_of(exc)
        if status is None:
            log.exception("unexpected error on %s", route)
            status, message = HTTPStatus.INTERNAL_SERVER_ERROR, "internal error; see the log"
        else:
            message = str(exc) or HTTPStatus(status).phrase
        if ctx is not None:
            ctx.response.status_code = int(status)  # BentoML copies it onto the response
        self._observe(route, started, int(status))
        return _json(ErrorAnswer(error=message), status=int(status))


@info_app.get("/docs.json", include_in_schema=False)
def openapi_document() -> JSONResponse:
    """The OpenAPI document: BentoML's, made to tell every status and bound (services/openapi)."""
    return JSONResponse(_openapi_document())


@functools.cache
def _openapi_document() -> dict[str, Any]:
    from services.openapi import document

    return document(DigitService.openapi_spec.asdict())


def _json(answer: BaseModel, status: int = 200) -> Response:
    """An answer serialised in pydantic's Rust code: BentoML's output path costs more."""
    return Response(answer.model_dump_json(), status_code=status, media_type="application/json")


def _raise_problem(ctx: bentoml.Context | None) -> None:
    """Raise the error :mod:`services.inputs` found in the body, if any."""
    _raise_request_problem(ctx.request if ctx is not None else None)


def _raise_request_problem(request: Request | None) -> None:
    problem = request_problem(request) if request is not None else None
    if problem is not None:
        raise RequestProblem(problem[1], status=problem[0])


class DirectPredict:
    """ASGI middleware: POST /predict answered by :meth:`DigitService.predict_request`.

    BentoML 1.4 runs about a millisecond of Python around each ``@bentoml.api`` call
    before and after the API's own code, measured with py-spy and in-process (issue 17):
    a ``Request`` and the service context set per request (ContextMiddleware), the router,
    the endpoint's input handling (serde, the method's signature, its keyword arguments),
    dependency injection for the response headers and a background task per request.
    None of it does anything for /predict, whose body :mod:`services.inputs` already
    parses and whose answer is already a ``Response``. Added with
    ``add_asgi_middleware``, this sits inside BentoML's own middlewares, so its request
    metrics, tracing settings and timeout still see every request; only the hot route is
    taken here, with the same parsing, errors and our metrics as the API.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/predict" and scope["method"] == "POST":
            service = get_current_service()
            if service is not None:
                response = await service.predict_request(Request(scope, receive))
                response.headers["server"] = SERVER_HEADER
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


# What BentoML's responses say; the direct route says it too.
SERVER_HEADER = "BentoML Service/digitloop"
DigitService.add_asgi_middleware(DirectPredict)


def _metrics():
    from services.metrics import service_metrics

    return service_metrics()
