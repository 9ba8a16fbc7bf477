"""Errors on /v1 routes take OpenAI's shape, so OpenAI clients show their message.

``{"error": {"message": ..., "type": ..., "code": ..., "param": null}}``; ``code`` is the same
stable code the rest of the API puts in ``error``.
"""

from __future__ import annotations

from typing import Any

from app.llm.client import UpstreamError

# OpenAI's error types, by HTTP status.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "conflict_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}

# A failed upstream that gave no HTTP status of its own (connection, timeout, bad stream).
_UPSTREAM_STATUS = {"upstream_timeout": 504, "internal": 500}
_BAD_GATEWAY = 502


def openai_error(status: int, code: str, message: str) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "code": code, "param": None}}


def openai_error_for_status(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    return status, openai_error(status, code, message)


def upstream_failure(error: UpstreamError | None, code: str, message: str) -> tuple[int, dict[str, Any]]:
    """The answer for a run that failed before anything was relayed.

    An upstream that answered with an HTTP error gets its status and its own error body
    relayed; anything else is a 502 (504 for a timeout) with Runforge's code and message.
    """
    if error is not None and error.status is not None:
        body = error.body
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            return error.status, body
        return error.status, openai_error(error.status, code, message)
    status = _UPSTREAM_STATUS.get(code, _BAD_GATEWAY)
    return status, openai_error(status, code, message)
