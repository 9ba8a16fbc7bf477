"""The JSON API's errors: domain errors (app/errors.py) mapped to HTTP in one place.

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

from app.errors import (
    AppError,
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)

log = logging.getLogger(__name__)


class ErrorBody(msgspec.Struct):
    """The shape of every error body, as the OpenAPI schema documents it (see app/api/openapi.py)."""

    status: int
    error: str  # the stable code: "run_active", "app_not_found", "invalid_request", ...
    message: str
    # Validation errors only (error "invalid_request"): what failed, e.g.
    # {"message": "Expected `str`, got `int`", "key": "message", "source": "body"}.
    details: list[dict[str, Any]] = msgspec.field(default_factory=list)


class MethodNotAllowed(AppError):
    """A route that takes other methods (raised by raw ASGI routes, which Litestar does not route)."""

    code = "method_not_allowed"


# The domain's errors, by class (the most specific class that is listed wins).
HTTP_STATUS: dict[type[AppError], int] = {
    BadRequest: 400,
    Unauthorized: 401,
    Forbidden: 403,
    NotFound: 404,
    MethodNotAllowed: 405,
    Conflict: 409,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    ServiceUnavailable: 503,
}


def http_status(exc: AppError) -> int:
    for cls in type(exc).__mro__:
        status = HTTP_STATUS.get(cls)
        if status is not None:
            return status
    return 400


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
    status = http_status(exc)
    return _json(status, error_body(status, exc.code, exc.message), error_headers(exc))


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
