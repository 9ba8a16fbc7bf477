"""The domain's errors: what went wrong, as a stable machine-readable code and a message.

They know nothing of HTTP: each transport maps them to its own shape in one place
(app/api/errors.py for the JSON API, app/proxy/errors.py for /v1, the WebSocket's ERROR).
"""

from __future__ import annotations


class AppError(Exception):
    """An error with a stable code, raised anywhere below the handlers."""

    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(AppError):
    """The request itself is wrong: a malformed id, an empty message, invalid JSON."""

    code = "bad_request"


class Unauthorized(AppError):
    """No credentials, or ones that name no user."""

    code = "unauthorized"


class Forbidden(AppError):
    """The thing exists and belongs to another user."""

    code = "forbidden"


class NotFound(AppError):
    code = "not_found"


class Conflict(AppError):
    """The state forbids it now: an app with an active run, a run id in use, a shutdown."""

    code = "conflict"


class AppBusy(Conflict):
    """The app has an active run (found by the database's check, with several workers)."""

    def __init__(self, app_id: str, run_id: str, owner_worker: str | None, stop_requested: bool) -> None:
        super().__init__(f"app {app_id} has an active run {run_id}", code="run_active")
        self.run_id = run_id
        self.owner_worker = owner_worker
        self.stop_requested = stop_requested


class ServiceUnavailable(AppError):
    """A dependency (the database) cannot do it now; trying again may work."""

    code = "unavailable"


class PayloadTooLarge(AppError):
    code = "too_large"


class TooManyRequests(AppError):
    """A per-user limit (app/limits.py); ``retry_after_s``: when trying again may work."""

    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: float, code: str | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s
