"""What the OpenAPI schema (/schema/openapi.json) says beyond the handlers' signatures.

Litestar documents a 400 of its own shape (``status_code``, ``detail``) for every handler with
parameters; our errors take app/errors.py's shape, so each handler names the error statuses it
can answer with through ``error_responses``, which replaces that 400 too. ``documented`` puts a
constraint in the schema only: the handler keeps checking it, with its own error code (an empty
message is ``empty_message``, not a generic validation error), and the schema says which input
is accepted. tests/test_schema_fuzz.py holds the two to each other.
"""

from __future__ import annotations

from typing import Annotated, Any, TypeAlias, TypeVar

import msgspec
from litestar.enums import RequestEncodingType
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import OpenAPIType
from litestar.params import BodyKwarg, KwargDefinition, PathParameter

from app.api.errors import ErrorBody
from app.control.run import RUN_ID_PATTERN
from app.settings import Settings

T = TypeVar("T")

# What each error status means, for any route that can answer with it; `error` has the code.
_MEANINGS = {
    400: "Invalid request: a parameter or the body failed validation (error `invalid_request`, with `details`), "
    "or a value was refused (its own code, e.g. `empty_message`, `invalid_run_id`)",
    401: "No valid token (`unauthorized`, `invalid_token`): send `Authorization: Bearer <token>`",
    403: "The app or run belongs to another user (`forbidden`)",
    404: "Not found (`app_not_found`, `run_not_found`, `file_not_found`, ...)",
    409: "Conflict with the app's state (`run_active`, `run_id_taken`, `shutting_down`, ...)",
    413: "Too large (`message_too_large`, `workspace_too_large`)",
    429: "A per-user limit (`rate_limited`, `too_many_runs`): retry after the `Retry-After` header's seconds",
    503: "The run could not be started now (`database_unavailable`): retry",
}

# The checks the server makes, as schema constraints (Python's str.strip() strips what \s matches).
NOT_BLANK = r"\S"
RUN_ID = RUN_ID_PATTERN.pattern
# Every run's id has RUN_ID's form (a client's is checked, the server's are hex): another is a 404.
RunIdPath: TypeAlias = Annotated[str, PathParameter(schema_extra={"pattern": RUN_ID})]
# A workspace path the server always takes (app/workspace/paths.py refuses, with invalid_path,
# control characters, "..", backslashes, encoded separators, look-alikes...): a narrower promise
# than what it accepts, which a regular expression cannot say exactly (NFKC folding, say).
WORKSPACE_PATH = {"pattern": r"^[A-Za-z0-9_-][A-Za-z0-9_.-]*(/[A-Za-z0-9_-][A-Za-z0-9_.-]*)*$", "maxLength": 255}
SSE = "text/event-stream"
# The default RUNFORGE_MAX_MESSAGE_CHARS: a server set lower answers 413 past its own limit.
MAX_MESSAGE_CHARS = Settings().max_message_chars


class OpenAIError(msgspec.Struct):
    message: str
    type: str
    code: str | None
    param: str | None


class OpenAIErrorBody(msgspec.Struct):
    """The shape of errors under /v1 (app/proxy/errors.py), so OpenAI clients show their message."""

    error: OpenAIError


def error_responses(*statuses: int, openai: bool = False) -> dict[int, ResponseSpec]:
    """The error responses of a handler, by status, in our error shape (OpenAI's under /v1)."""
    container = OpenAIErrorBody if openai else ErrorBody
    return {
        status: ResponseSpec(data_container=container, description=_MEANINGS[status], generate_examples=False)
        for status in statuses
    }


# Every handler of one app (or run): it may be missing, or another user's.
APP_ERRORS = error_responses(400, 401, 403, 404)


def response(description: str, data: Any = dict[str, Any], media_type: str = "application/json") -> ResponseSpec:
    """A further success response (another status, or a body that is not JSON); ``data=None``: no body."""
    return ResponseSpec(data_container=data, description=description, media_type=media_type, generate_examples=False)


def documented(**schema: Any) -> KwargDefinition:
    """Schema-only constraints, in the schema's own terms (``pattern``, ``maxLength``, ...).

    For ``Annotated[str, documented(...)]`` in a msgspec struct's fields (msgspec ignores it) or
    as a parameter's ``schema_extra``: the server does not enforce these at decoding, its
    handlers check them and answer with their own codes.
    """
    return KwargDefinition(schema_extra=schema)


def optional_string(**schema: Any) -> dict[str, Any]:
    """``schema_extra`` for an optional query or header parameter (``str | None``): a string, or
    absent. Litestar documents it as string-or-null, but a query or header has no null."""
    return {"oneOf": None, "type": OpenAPIType.STRING, **schema}


# A JSON body whose struct forbids unknown fields (forbid_unknown_fields=True): the schema says so.
ClosedJSONBody: TypeAlias = Annotated[
    T, BodyKwarg(media_type=RequestEncodingType.JSON, schema_extra={"additionalProperties": False})
]
