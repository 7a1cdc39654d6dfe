"""Errors of the serving component, each tied to the HTTP status it answers with.

The service turns any of these into ``{"error": <message>}`` with the status below, in
one place (``DigitService._error``); nothing else becomes a 5xx. Which route answers
which status is documented in :mod:`services.openapi`.
"""

from __future__ import annotations

from http import HTTPStatus

from contracts.errors import (
    DigitloopError,
    EmptyDrawingError,
    InvalidImageError,
    ModelNotFoundError,
)


class ServingError(DigitloopError):
    """Base class; ``status`` is the HTTP status the service answers with."""

    status: HTTPStatus = HTTPStatus.BAD_REQUEST


class RequestProblem(ServingError):
    """A body that could not be parsed; the parser chose the status (400 or 413)."""

    def __init__(self, message: str, status: HTTPStatus = HTTPStatus.BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class PayloadTooLarge(ServingError):
    status = HTTPStatus.REQUEST_ENTITY_TOO_LARGE


class BadRequest(ServingError):
    status = HTTPStatus.BAD_REQUEST


class UnknownPrediction(ServingError):
    status = HTTPStatus.NOT_FOUND


class DraftTakesNoFeedback(ServingError):
    """Feedback on a draft's id: the draft was never logged, so there is nothing to label."""

    status = HTTPStatus.UNPROCESSABLE_ENTITY


class DuplicateFeedbackError(ServingError):
    status = HTTPStatus.CONFLICT


class Unauthorized(ServingError):
    status = HTTPStatus.UNAUTHORIZED


class Forbidden(ServingError):
    status = HTTPStatus.FORBIDDEN


class NotReady(ServingError):
    status = HTTPStatus.SERVICE_UNAVAILABLE


class FeedbackNotDurable(ServingError):
    """The store is down and the spool is full: the record was NOT accepted."""

    status = HTTPStatus.SERVICE_UNAVAILABLE


# Domain errors raised below the service, and the status each answers with. A request the
# OpenAPI schema accepts can still hold bytes that are not an image, or a drawing without
# ink: 422, the content is unusable; 400 is for a request that breaks the schema.
STATUS_OF: dict[type[Exception], HTTPStatus] = {
    InvalidImageError: HTTPStatus.UNPROCESSABLE_ENTITY,
    EmptyDrawingError: HTTPStatus.UNPROCESSABLE_ENTITY,
    ModelNotFoundError: HTTPStatus.NOT_FOUND,
}


def status_of(exc: Exception) -> HTTPStatus | None:
    """The HTTP status of an expected error, or None for an unexpected one."""
    if isinstance(exc, ServingError):
        return exc.status
    for kind, status in STATUS_OF.items():
        if isinstance(exc, kind):
            return status
    return None
