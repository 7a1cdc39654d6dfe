"""The one HTTP client of the prediction service: the app, the simulator, the service rollout
driver and the tests all call the service through it.

Every method either returns the contract's model of the answer (:mod:`contracts.api`) or
raises :class:`ServiceError` (the service answered with an error) or
:class:`ServiceUnavailable` (no answer: refused, unreachable, timed out). Both carry a
message in plain words that the app shows as is. Requests go as the service takes them and
are validated there, once; the client splits batches at the contract's limit.

Example:
    >>> with DigitloopClient("http://127.0.0.1:3000") as client:  # doctest: +SKIP
    ...     answer = client.predict(Path("seven.png").read_bytes())
    ...     client.feedback(answer.prediction_id, label=7)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar

import httpx
import numpy as np
from pydantic import BaseModel, ValidationError

from contracts.api import (
    DEFAULT_TIMEOUT_S,
    MAX_BATCH,
    TRACK_HEADER,
    TRACKS,
    BatchAnswer,
    ErrorAnswer,
    FeedbackAck,
    ImageError,
    ModelInfo,
    Prediction,
    Track,
)
from contracts.errors import DigitloopError

M = TypeVar("M", bound=BaseModel)


class ClientSettings(Protocol):
    """What a client is made from: the settings of a part that calls the service."""

    service_url: str
    request_timeout_s: float

    def token(self) -> str | None: ...


class ServiceError(DigitloopError):
    """The service answered with an error; ``message`` is fit to show to a person.

    Attributes:
        status: the HTTP status, or None when no answer came (see ServiceUnavailable).
        message: what went wrong, in plain words.
    """

    def __init__(self, status: int | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(status={self.status!r}, message={self.message!r})"


class ServiceUnavailable(ServiceError):
    """No answer: the service is down, unreachable or slower than the timeout."""

    def __init__(self, message: str) -> None:
        super().__init__(None, message)


def image_media_type(data: bytes) -> str:
    """The media type of PNG/JPEG bytes from their signature; anything else is octet-stream."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    return "application/octet-stream"


class DigitloopClient:
    """Synchronous client of the prediction service; safe to share between threads.

    Args:
        base_url: the service's URL, e.g. ``http://127.0.0.1:3000``.
        token: sent as ``Authorization: Bearer <token>`` when given (a gateway's API token,
            or the admin token of :meth:`reload`).
        timeout: seconds to wait for connecting and for each answer (default
            ``DEFAULT_TIMEOUT_S`` of the contract, 10).
        source: the ``source`` of feedback sent without one (default ``"ui"``).
        transport: how requests travel; default the network (tests pass an
            ``httpx.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        timeout: float = DEFAULT_TIMEOUT_S,
        source: str = "ui",
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.source = source
        headers = {"User-Agent": "digitloop", "Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )

    @classmethod
    def from_settings(cls, settings: ClientSettings) -> DigitloopClient:
        """A client of the service ``settings`` point at (e.g. :class:`ui.settings.UISettings`)."""
        return cls(settings.service_url, settings.token(), settings.request_timeout_s)

    # -- lifecycle ---------------------------------------------------------------------

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DigitloopClient:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DigitloopClient({self.base_url!r}, timeout={self.timeout})"

    # -- API ---------------------------------------------------------------------------

    def predict(
        self, image: bytes, track: Track | None = None, *, draft: bool = False
    ) -> Prediction:
        """Predict the digit in PNG/JPEG ``image`` bytes.

        Args:
            image: the encoded image (any size, dark ink on light or the reverse).
            track: pin the request to ``"stable"`` or ``"canary"``; None lets the split choose.
            draft: a drawing still in progress: answered, not logged, and its id takes no
                feedback (send the final drawing without draft for that).
        """
        # The image as the body: the service reads it as it is, where a multipart form
        # costs it a parse per request (issue 17).
        headers = {"Content-Type": image_media_type(image), **_track(track)}
        params = {"draft": "true"} if draft else None
        answer = self._request("POST", "/predict", content=image, params=params, headers=headers)
        return _parse(Prediction, answer)

    def predict_pixels(
        self,
        pixels: np.ndarray | Sequence[Sequence[float]],
        track: Track | None = None,
        *,
        draft: bool = False,
    ) -> Prediction:
        """Predict the digit in a 2-D grey array (28x28 or any HxW, 0-255 or 0-1); ``track``
        and ``draft`` as in :meth:`predict`."""
        array = np.asarray(pixels)
        if array.ndim != 2:
            raise ValueError(f"pixels must be a 2-D array, got shape {array.shape}")
        body: dict[str, Any] = {"pixels": array.tolist()}
        if draft:
            body["draft"] = True
        answer = self._request("POST", "/predict", json=body, headers=_track(track))
        return _parse(Prediction, answer)

    def predict_batch(
        self, images: Sequence[bytes], track: Track | None = None
    ) -> list[Prediction]:
        """Predict several PNG/JPEG images; longer lists go in requests of MAX_BATCH images
        (the contract's limit).

        All or nothing: an image the service cannot predict raises ServiceError with its
        status and index ("image 3: ..."). :meth:`predict_batch_each` answers each instead.
        """
        return _all_predicted(self.predict_batch_each(images, track))

    def predict_batch_each(
        self, images: Sequence[bytes], track: Track | None = None
    ) -> list[Prediction | ImageError]:
        """Predict several PNG/JPEG images: one answer per image, in order.

        An image the service cannot predict (not readable, too little ink, too large) gets
        an :class:`ImageError` (its ``index`` in ``images``); the others are predicted.
        """

        def body(chunk: Sequence[bytes], start: int) -> dict[str, Any]:
            return {
                "files": [
                    ("images", (f"image-{start + i}", data, image_media_type(data)))
                    for i, data in enumerate(chunk)
                ]
            }

        return self._batched(images, body, track)

    def predict_batch_pixels(
        self, images: np.ndarray | Sequence[np.ndarray], track: Track | None = None
    ) -> list[Prediction]:
        """Predict several 2-D grey arrays (the simulator's path), MAX_BATCH per request.

        All or nothing, as :meth:`predict_batch`.
        """

        def body(chunk: Sequence[np.ndarray], start: int) -> dict[str, Any]:
            return {"json": {"pixels": [np.asarray(image).tolist() for image in chunk]}}

        return _all_predicted(self._batched(images, body, track))

    def _batched(
        self,
        items: Sequence[Any],
        body: Callable[[Sequence[Any], int], dict[str, Any]],
        track: Track | None,
    ) -> list[Prediction | ImageError]:
        answers: list[Prediction | ImageError] = []
        for start in range(0, len(items), MAX_BATCH):
            chunk = items[start : start + MAX_BATCH]
            answer = self._request(
                "POST", "/predict_batch", headers=_track(track), **body(chunk, start)
            )
            if not isinstance(answer, list) or len(answer) != len(chunk):
                raise ServiceError(
                    200,
                    f"The prediction service answered {_count(answer)} predictions "
                    f"for {len(chunk)} images.",
                )
            for item in _parse(BatchAnswer, answer).root:
                if isinstance(item, ImageError):
                    # The service counts from the start of its request: count from ours.
                    item = item.model_copy(update={"index": start + item.index})
                answers.append(item)
        return answers

    def feedback(self, prediction_id: str, label: int, source: str | None = None) -> FeedbackAck:
        """Record the true digit of a prediction. Raises ServiceError 409 if already recorded,
        422 for a draft's id."""
        body = {
            "prediction_id": prediction_id,
            "label": int(label),
            "source": source or self.source,
        }
        return _parse(FeedbackAck, self._request("POST", "/feedback", json=body))

    def model_info(self) -> ModelInfo:
        """What each track serves (``GET /model``; ``POST /model`` on a service without GET)."""
        try:
            answer = self._request("GET", "/model")
        except ServiceError as exc:
            if exc.status not in (404, 405):
                raise
            answer = self._request("POST", "/model", json={})
        return _parse(ModelInfo, answer)

    def reload(
        self,
        stable_model: str | None = None,
        canary_model: str | None = None,
        canary_weight: int | None = None,
    ) -> ModelInfo:
        """Serve other versions without a restart (``POST /admin/reload``, the client's token
        as the admin token); a field left None keeps its value, ``canary_model=""`` removes
        the canary. Answers what serves afterwards."""
        changes = {
            "stable_model": stable_model,
            "canary_model": canary_model,
            "canary_weight": canary_weight,
        }
        body = {name: value for name, value in changes.items() if value is not None}
        return _parse(ModelInfo, self._request("POST", "/admin/reload", json=body))

    def ready(self) -> bool:
        """True when ``/readyz`` answers 2xx; False when it does not, or nothing answers."""
        try:
            return self._http.get("/readyz").is_success
        except httpx.HTTPError:
            return False

    # -- plumbing ----------------------------------------------------------------------

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TimeoutException:
            raise ServiceUnavailable(
                f"The prediction service at {self.base_url} did not answer within "
                f"{self.timeout:g} s. It may be busy or starting up; try again in a moment."
            ) from None
        except httpx.TransportError as exc:
            raise ServiceUnavailable(
                f"The prediction service at {self.base_url} cannot be reached "
                f"({_reason(exc)}). Is it running?"
            ) from None
        if response.is_success:
            try:
                return response.json()
            except ValueError:
                raise ServiceError(
                    response.status_code,
                    f"The prediction service answered {path} with something that is not JSON.",
                ) from None
        raise ServiceError(response.status_code, _error_message(response))


def _all_predicted(answers: list[Prediction | ImageError]) -> list[Prediction]:
    """The predictions, or ServiceError for the first image the service could not predict."""
    predictions = []
    for answer in answers:
        if isinstance(answer, ImageError):
            raise ServiceError(answer.status, f"image {answer.index}: {answer.error}")
        predictions.append(answer)
    return predictions


def _track(track: Track | None) -> dict[str, str]:
    if track is None:
        return {}
    if track not in TRACKS:
        raise ValueError(f"track must be 'stable' or 'canary', got {track!r}")
    return {TRACK_HEADER: track}


def _parse(model: type[M], answer: Any) -> M:
    try:
        return model.model_validate(answer)
    except ValidationError as exc:
        raise ServiceError(
            200, f"The prediction service sent an answer this app does not understand ({exc})."
        ) from None


def _count(answer: Any) -> str:
    return str(len(answer)) if isinstance(answer, list) else "no list of"


def _reason(exc: httpx.TransportError) -> str:
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "name" in text and ("resolve" in text or "known" in text):
            return "unknown host name"
        return "cannot connect"
    if isinstance(exc, httpx.RemoteProtocolError):
        return "the connection closed without an answer"
    return type(exc).__name__


def _error_message(response: httpx.Response) -> str:
    """The service's ``{"error": ...}`` message, or a plain sentence about the status."""
    try:
        return ErrorAnswer.model_validate_json(response.content).error
    except ValidationError:
        pass
    if response.status_code >= 500:
        return (
            f"The prediction service had a problem (HTTP {response.status_code} "
            f"{response.reason_phrase}). Try again; if it persists, check the service's log."
        )
    return (
        f"The prediction service refused the request "
        f"(HTTP {response.status_code} {response.reason_phrase})."
    )
