"""The OpenAI-compatible API under /v1: chat completions (relayed, interruptible), models, interrupt.

Clients authenticate with their Runforge token as the API key; the upstream key never leaves
the server. Errors take OpenAI's shape (app/proxy/errors.py).
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, TypeAlias

import msgspec
from litestar import Litestar, Request, Response, Router, get, post
from litestar.enums import RequestEncodingType
from litestar.exceptions import HTTPException
from litestar.handlers import asgi
from litestar.openapi.spec import OpenAPIType, Schema
from litestar.params import Body
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED
from litestar.types import ExceptionHandlersMap, Receive, Scope, Send

from app.api.deps import CurrentUser, ServicesDep, bearer_token
from app.api.errors import MethodNotAllowed, error_headers, http_status
from app.api.openapi import error_responses, response
from app.api.proxy_relay import AsgiReply, relay
from app.control.run import RUN_ID_PATTERN
from app.errors import AppError, BadRequest, NotFound, PayloadTooLarge, Unauthorized
from app.llm.client import UpstreamError
from app.proxy import ChatExchange, ProxyRequest, parse_proxy_request
from app.proxy.errors import openai_error, upstream_failure
from app.runs import StopState
from app.services import Services
from app.store.models import User


class InterruptRequest(msgspec.Struct):
    requestId: str | None = None
    messageId: str | None = None


def _named(field: str) -> Schema:
    return Schema(required=[field], properties={field: Schema(type=OpenAPIType.STRING, min_length=1)})


# One of the ids, not empty (else 400 missing_id). The server also takes both when they are
# equal (different ones: ambiguous_id); the schema asks for exactly one.
InterruptBody: TypeAlias = Annotated[
    InterruptRequest,
    Body(media_type=RequestEncodingType.JSON, schema_extra={"oneOf": [_named("requestId"), _named("messageId")]}),
]


@asgi("/chat/completions", copy_scope=False)
async def chat_completions(scope: Scope, receive: Receive, send: Send) -> None:
    services: Services = Litestar.from_scope(scope).state.services
    run_id: str | None = None  # known once the body is parsed: errors after that echo it
    try:
        user, request = await _receive(services, scope, receive)
        run_id = request.run_id or uuid.uuid4().hex
        exchange = ChatExchange(request, run_id)
        run = await services.control.start_chat(user.id, exchange, run_id)
    except AppError as exc:
        # Without a run id, the app's hook echoes the client's X-Request-Id if it is a valid one.
        headers = [(name.lower().encode(), value.encode()) for name, value in error_headers(exc).items()]
        status = http_status(exc)
        body = msgspec.json.encode(openai_error(status, exc.code, exc.message))
        await AsgiReply(scope, send, run_id, services.settings.send_timeout_s).json(status, body, headers)
        return
    await relay(run, exchange, AsgiReply(scope, send, run.id, services.settings.send_timeout_s), receive)


async def _receive(services: Services, scope: Scope, receive: Receive) -> tuple[User, ProxyRequest]:
    if scope.get("method") != "POST":
        raise MethodNotAllowed("use POST /v1/chat/completions")
    user = await _authenticate(services, scope)
    settings = services.settings
    raw = await _read_body(receive, settings.max_chat_body_bytes)
    request = parse_proxy_request(raw, _header(scope, b"x-request-id"), settings.llm.model, settings.max_message_chars)
    return user, request


async def _authenticate(services: Services, scope: Scope) -> User:
    # The API key, as OpenAI clients send it (a bearer token); else the sign-in cookie (browser apps).
    token = bearer_token(Request(scope))
    if token is None:
        raise Unauthorized("send your Runforge token as the API key: 'Authorization: Bearer <token>'")
    user = await services.user_for_token(token)
    if user is None:
        raise Unauthorized("the API key is not a valid Runforge token", code="invalid_api_key")
    return user


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BadRequest("the client left before sending its whole request", code="client_disconnect")
        chunk: bytes = message.get("body", b"")  # type: ignore[assignment]
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is larger than {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


@get("/models", responses=error_responses(401, openai=True))
async def list_models(services: ServicesDep, user: CurrentUser) -> dict[str, Any]:
    return await services.llm.list_models()


INTERRUPT_RESPONSES = {
    202: response("No such request yet: the interrupt is remembered, and stops it as it starts"),
    **error_responses(400, 401, 403, 404, 429, openai=True),
}


@post("/interrupt", status_code=HTTP_200_OK, responses=INTERRUPT_RESPONSES)
async def interrupt(data: InterruptBody, services: ServicesDep, user: CurrentUser) -> Response[dict[str, Any]]:
    request_id = _interrupt_target(data)
    if not RUN_ID_PATTERN.fullmatch(request_id):
        raise NotFound(f"no request {request_id!r}: not a request id", code="request_not_found")
    result = await services.control.stop(user.id, request_id)
    if result.state is StopState.PENDING:
        message = f"Request {request_id} has not started: it is interrupted as it starts"
        return _interrupt_answer(request_id, message, "pending", HTTP_202_ACCEPTED)
    if result.took_effect:
        return _interrupt_answer(request_id, f"Interrupt signal sent for request {request_id}", result.status)
    # Already stopped by an earlier interrupt, or completing/complete: nothing left to stop.
    return _interrupt_answer(request_id, f"Request {request_id} had already finished", result.status)


def _interrupt_target(data: InterruptRequest) -> str:
    ids = {value for value in (data.requestId, data.messageId) if value}
    if not ids:
        raise BadRequest("name the request to interrupt: {'requestId': ...} or {'messageId': ...}", code="missing_id")
    if len(ids) > 1:
        raise BadRequest("'requestId' and 'messageId' name the same request: send one of them", code="ambiguous_id")
    return ids.pop()


def _interrupt_answer(request_id: str, message: str, status: str, code: int = HTTP_200_OK) -> Response[dict[str, Any]]:
    return Response({"message": message, "requestId": request_id, "status": status}, status_code=code)


def _app_error(_: Request[Any, Any, Any], exc: AppError) -> Response[dict[str, Any]]:
    status = http_status(exc)
    return Response(openai_error(status, exc.code, exc.message), status_code=status, headers=error_headers(exc))


def _http_error(_: Request[Any, Any, Any], exc: HTTPException) -> Response[dict[str, Any]]:
    code = "invalid_request" if exc.status_code == 400 else "http_error"
    body = openai_error(exc.status_code, code, exc.detail)
    return Response(body, status_code=exc.status_code, headers=exc.headers)  # a 405's Allow, say


def _upstream_error(_: Request[Any, Any, Any], exc: UpstreamError) -> Response[dict[str, Any]]:
    status, body = upstream_failure(exc, exc.code, exc.message)
    return Response(body, status_code=status)


V1_EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    AppError: _app_error,
    UpstreamError: _upstream_error,
    HTTPException: _http_error,
}

v1_router = Router(
    path="/v1",
    route_handlers=[chat_completions, list_models, interrupt],
    exception_handlers=V1_EXCEPTION_HANDLERS,
)
