"""Errors that reach HTTP clients, and the one place that maps exceptions to responses.

Every error body has the same shape: ``{"status": 409, "error": "run_active", "message": "..."}``
(plus ``"details"`` for validation errors). ``error`` is a stable machine-readable code.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct):
    """The shape of every error body, as the OpenAPI schema documents it (see app/api/openapi.py)."""

    status: int
    error: str  # the stable code: "run_active", "app_not_found", "invalid_request", ...
    message: str
    # Validation errors only (error "invalid_request"): what failed, e.g.
    # {"message": "Expected `str`, got `int`", "key": "message", "source": "body"}.
    details: list[dict[str, Any]] = msgspec.field(default_factory=list)


class AppError(Exception):
    """An error with an HTTP status and a stable code, raised anywhere below the handlers."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(AppError):
    status = 400
    code = "bad_request"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class MethodNotAllowed(AppError):
    status = 405
    code = "method_not_allowed"


class Conflict(AppError):
    status = 409
    code = "conflict"


class AppBusy(Conflict):
    """The app has an active run (found by the database's check, with several workers)."""

    def __init__(self, app_id: str, run_id: str, owner_worker: str | None, stop_requested: bool) -> None:
        super().__init__(f"app {app_id} has an active run {run_id}", code="run_active")
        self.run_id = run_id
        self.owner_worker = owner_worker
        self.stop_requested = stop_requested


class ServiceUnavailable(AppError):
    status = 503
    code = "unavailable"


class PayloadTooLarge(AppError):
    status = 413
    code = "too_large"


class TooManyRequests(AppError):
    """A per-user limit (app/limits.py); ``retry_after_s`` becomes the Retry-After header."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


def error_headers(exc: AppError) -> dict[str, str]:
    """The headers an error's response carries besides its body (Retry-After for a 429)."""
    if isinstance(exc, TooManyRequests):
        return {"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))}
    return {}


# Litestar's own HTTP exceptions, by status, get these codes.
_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
    429: "rate_limited",
}


def error_body(status: int, code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"status": status, "error": code, "message": message, **extra}


def _json(status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None) -> Response[dict[str, Any]]:
    return Response(content=body, status_code=status, media_type="application/json", headers=headers)


def app_error_handler(_: Request[Any, Any, Any], exc: AppError) -> Response[dict[str, Any]]:
    return _json(exc.status, error_body(exc.status, exc.code, exc.message), error_headers(exc))


def http_error_handler(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    status = exc.status_code
    if isinstance(exc, ValidationException):
        details = exc.extra if isinstance(exc.extra, list) else None
        body = error_body(status, "invalid_request", _validation_message(exc, details), details=details or [])
        return _json(status, body)
    if status >= 500:
        return internal_error_handler(_, exc)
    # Litestar's own headers stay (the Allow of a 405 names the path's methods, as RFC 9110 asks).
    return _json(status, error_body(status, _HTTP_CODES.get(status, "http_error"), exc.detail), exc.headers)


def internal_error_handler(_: Request[Any, Any, Any], exc: Exception) -> Response[dict[str, Any]]:
    log.exception("unhandled error", exc_info=exc)
    status = HTTP_500_INTERNAL_SERVER_ERROR
    return _json(status, error_body(status, "internal", "internal server error"))


def _validation_message(exc: ValidationException, details: list[Any] | None) -> str:
    if details:
        first = details[0]
        if isinstance(first, dict) and first.get("message"):
            key = first.get("key")
            return f"{key}: {first['message']}" if key else str(first["message"])
    return exc.detail


EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: app_error_handler,
    HTTPException: http_error_handler,
    Exception: internal_error_handler,
}
