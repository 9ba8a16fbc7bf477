"""The agent WebSocket: several runs over one socket, each followed and interruptible by id.

Protocol (docs/api.md has every message):

    client REQUEST {requestId?, messageId?, payload: {appId, message}}
    server ACK {requestId, messageId} · EVENT {requestId, event, seq, data}…
           then exactly one of DONE / INTERRUPTED / FAILED {requestId, messageId, data}
    client INTERRUPT {requestId, reason?}
    server INTERRUPT_ACK {requestId, status: SUCCESS | NOT_FOUND | ALREADY_FINISHED}
    server ERROR {code, message} for a message it cannot act on; the socket stays open

The requestId is the run's id; the messageId is the client's own UI id and is only echoed.
Closing the socket interrupts the runs it started.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec
from litestar import WebSocket, websocket
from litestar.exceptions import WebSocketDisconnect

from app.api.deps import TOKEN_COOKIE, ServicesDep, bearer_token
from app.control.cancel import StopReason, uncancel_current_task
from app.control.events import Done, Failed, Interrupted, LoggedEvent
from app.control.request import Multitask
from app.control.run import RUN_ID_PATTERN, Run
from app.errors import AppError, Forbidden, TooManyRequests
from app.runs import CodeRunSpec, StopState
from app.services import Services
from app.store.models import User
from app.wire.sse import data_json, sse_name

log = logging.getLogger(__name__)

# A socket may run this many requests at once; more are refused with ERROR too_many_requests.
MAX_ACTIVE_PER_SOCKET = 32
MAX_MESSAGE_ID_CHARS = 128
UNAUTHORIZED_CLOSE = 4401
# The client did not take a message within the send timeout (settings.send_timeout_s); an
# application close code: 4000 + the HTTP status.
TOO_SLOW_CLOSE = 4408

_TERMINAL = {Done.kind: "DONE", Interrupted.kind: "INTERRUPTED", Failed.kind: "FAILED"}
_encoder = msgspec.json.Encoder()


class ClientGone(Exception):
    """A message could not be sent: the socket is closed, or the client stopped reading."""


class ProtocolError(Exception):
    """A client message the server cannot act on: answered with ERROR, the socket stays open."""

    def __init__(self, code: str, message: str, **echo: str | None) -> None:
        super().__init__(message)
        self.code, self.message = code, message
        self.echo = {key: value for key, value in echo.items() if value is not None}


@websocket("/ws/agent")
async def agent_socket(socket: WebSocket[Any, Any, Any], services: ServicesDep) -> None:
    await socket.accept()
    user = await _authenticate(socket, services)
    if user is None:
        await socket.send_text(_error("unauthorized", "sign in: a Runforge token as ?token=, cookie or bearer"))
        await socket.close(code=UNAUTHORIZED_CLOSE)
        return
    session = AgentSession(services, user, socket.send_text)
    try:
        await session.serve(socket.receive)
    except asyncio.CancelledError:
        if not session.hung_up:
            raise
        uncancel_current_task()  # the session cancelled its own loop: the client stopped taking messages
    finally:
        await session.close()
    if session.hung_up:
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                await socket.close(code=TOO_SLOW_CLOSE, reason="not reading")


async def _authenticate(socket: WebSocket[Any, Any, Any], services: Services) -> User | None:
    token = socket.query_params.get("token") or bearer_token(socket) or socket.cookies.get(TOKEN_COOKIE)
    return await services.user_for_token(token) if token else None


class AgentSession:
    """One socket's requests: their runs, the tasks that forward their events, one send lock."""

    def __init__(self, services: Services, user: User, send_text: Callable[[str], Awaitable[None]]) -> None:
        self._services = services
        self._user = user
        self._send_text = send_text
        self._send_lock = asyncio.Lock()  # one message at a time, whole, in order
        self._runs: dict[str, tuple[Run, str | None]] = {}  # requestId -> (run, messageId)
        # REQUESTs whose run is being started: requestId -> the messageId and whether an
        # INTERRUPT came meanwhile (a stop that races a run's creation is never lost).
        self._starting: dict[str, _Starting] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving: asyncio.Task[Any] | None = None
        self.hung_up = False

    async def serve(self, receive: Callable[[], Awaitable[Any]]) -> None:
        self._serving = asyncio.current_task()
        while True:
            message = await receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                await self._dispatch(message.get("text"))
            except ProtocolError as exc:
                await self._try_send(_error(exc.code, exc.message, **exc.echo))
            except ClientGone:
                return

    async def close(self) -> None:
        """The socket is gone: end every request's task; each one stops its run as it ends."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def send(self, text: str) -> None:
        """Send one message, or hang up on a client that cannot take it (ClientGone)."""
        try:
            async with self._send_lock, asyncio.timeout(self._services.settings.send_timeout_s):
                await self._send_text(text)
        except (OSError, TimeoutError, WebSocketDisconnect) as exc:
            self._hang_up()
            raise ClientGone from exc

    async def _try_send(self, text: str) -> None:
        with contextlib.suppress(ClientGone):
            await self.send(text)

    def _hang_up(self) -> None:
        """A send failed: end the whole session, so every run of this socket stops.

        Stopping only the request whose message failed would leave the others waiting on the
        same dead client, 30 s each.
        """
        if not self.hung_up:
            self.hung_up = True
            if self._serving is not None and self._serving is not asyncio.current_task():
                self._serving.cancel()

    # -- messages from the client ----------------------------------------------------------

    async def _dispatch(self, text: str | None) -> None:
        if text is None:
            raise ProtocolError("invalid_message", "messages are JSON text frames, not binary")
        try:
            message = msgspec.json.decode(text)
        except msgspec.DecodeError:
            raise ProtocolError("invalid_json", "the message is not valid JSON") from None
        except RecursionError:  # msgspec's refusal of a message nested deeper than it can recurse
            raise ProtocolError("invalid_json", "the message is nested too deeply to decode") from None
        if not isinstance(message, dict):
            raise ProtocolError("invalid_message", "a message is a JSON object with a 'type'")
        kind = message.get("type")
        if kind == "REQUEST":
            self._accept_request(message)
        elif kind == "INTERRUPT":
            await self._interrupt(message)
        else:
            raise ProtocolError("unknown_type", f"unknown message type {kind!r}: send REQUEST or INTERRUPT")

    def _accept_request(self, message: dict[str, Any]) -> None:
        message_id = _optional_text(message, "messageId", MAX_MESSAGE_ID_CHARS)
        request_id = _optional_text(message, "requestId", 64, messageId=message_id)
        if request_id is not None and not RUN_ID_PATTERN.fullmatch(request_id):
            raise ProtocolError("invalid_request_id", "requestId: 1-64 letters, digits, '_', '.' or '-'")
        gen = _gen_request(message.get("payload"), request_id, message_id)
        if len(self._tasks) >= MAX_ACTIVE_PER_SOCKET:
            raise ProtocolError(
                "too_many_requests", f"at most {MAX_ACTIVE_PER_SOCKET} requests run at once on one socket"
            )
        if request_id in self._starting or request_id in self._runs:
            raise ProtocolError(
                "request_id_in_use",
                f"request {request_id!r} is running on this socket",
                requestId=request_id,
                messageId=message_id,
            )
        request_id = request_id or uuid.uuid4().hex
        self._starting[request_id] = _Starting(message_id)
        task = asyncio.create_task(self._run_request(gen, request_id, message_id), name=f"ws-request:{request_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _interrupt(self, message: dict[str, Any]) -> None:
        request_id = message.get("requestId")
        if not isinstance(request_id, str) or not request_id:
            raise ProtocolError("invalid_message", "INTERRUPT needs the 'requestId' of the request to stop")
        reason = message.get("reason")
        try:
            status, hint = await self._stop(request_id)
        except TooManyRequests as exc:
            raise ProtocolError(exc.code, exc.message, requestId=request_id) from None
        if status == "SUCCESS":
            log.info("run interrupted over the socket", extra={"run_id": request_id, "detail": str(reason)[:200]})
        ack: dict[str, Any] = {"type": "INTERRUPT_ACK", "requestId": request_id, "status": status}
        if hint:
            ack["message"] = hint
        await self.send(_encoder.encode(ack).decode())

    async def _stop(self, request_id: str) -> tuple[str, str | None]:
        starting = self._starting.get(request_id)
        hint = self._message_id_hint(request_id)
        if starting is not None or hint is not None or not RUN_ID_PATTERN.fullmatch(request_id):
            self._services.limits.take_stop(self._user.id)  # answered here, and counted as any stop
            if starting is not None:
                starting.interrupted = True  # its run stops the moment it exists
                return "SUCCESS", None
            return "NOT_FOUND", hint or _unknown_hint(request_id)
        try:
            result = await self._services.control.stop(self._user.id, request_id)
        except Forbidden:  # another user's run is unknown to this socket
            return "NOT_FOUND", _unknown_hint(request_id)
        if result.state is StopState.PENDING:
            return "PENDING", f"no request {request_id!r} yet: it is interrupted as it starts"
        return ("SUCCESS" if result.took_effect else "ALREADY_FINISHED"), None

    def _message_id_hint(self, unknown_id: str) -> str | None:
        message_ids = {request_id: message_id for request_id, (_, message_id) in self._runs.items()}
        message_ids |= {request_id: starting.message_id for request_id, starting in self._starting.items()}
        for request_id, message_id in message_ids.items():
            if message_id == unknown_id:
                return f"{unknown_id!r} is a messageId: interrupt by its requestId {request_id!r}"
        return None

    # -- one request -----------------------------------------------------------------------

    async def _run_request(self, gen: CodeRunSpec, request_id: str, message_id: str | None) -> None:
        try:
            run = await self._services.control.start_code(self._user.id, gen, request_id)
        except AppError as exc:
            await self._try_send(_error(exc.code, exc.message, requestId=request_id, messageId=message_id))
            return
        except Exception:
            log.exception("could not start a run for the socket", extra={"run_id": request_id})
            error = _error("internal", "the request could not be started", requestId=request_id, messageId=message_id)
            await self._try_send(error)
            return
        finally:
            starting = self._starting.pop(request_id)
        self._runs[request_id] = (run, message_id)
        if starting.interrupted:
            run.cancel(StopReason.USER_STOP)  # interrupted while starting: ACK, then INTERRUPTED
        try:
            await self.send(_encoder.encode({"type": "ACK", "requestId": request_id, "messageId": message_id}).decode())
            await self._forward(run, request_id, message_id)
        except ClientGone:
            pass  # the session hangs up; the run stops below
        finally:
            del self._runs[request_id]
            # However this task ends before the run's terminal message (the socket closed and
            # close() cancelled it, a send failed), nobody follows the run any more: stop it.
            # After the terminal message this is a no-op.
            run.cancel(StopReason.CLIENT_DISCONNECT)

    async def _forward(self, run: Run, request_id: str, message_id: str | None) -> None:
        prefix = _encoder.encode(request_id)
        async with contextlib.aclosing(run.log.follow()) as batches:
            async for batch in batches:
                for event in batch:
                    text = _event_message(event, prefix, message_id)
                    if text is not None:
                        await self.send(text)


@dataclass(slots=True)
class _Starting:
    message_id: str | None
    interrupted: bool = False


def _gen_request(payload: object, request_id: str | None, message_id: str | None) -> CodeRunSpec:
    echo = {"requestId": request_id, "messageId": message_id}
    if not isinstance(payload, dict):
        raise ProtocolError("invalid_payload", "REQUEST needs a 'payload' object: {appId, message}", **echo)
    app_id, text = payload.get("appId"), payload.get("message")
    if not isinstance(app_id, str) or not isinstance(text, str):
        raise ProtocolError("invalid_payload", "payload.appId and payload.message must be strings", **echo)
    multitask = payload.get("multitask", Multitask.INTERRUPT.value)
    if multitask not in {m.value for m in Multitask}:
        raise ProtocolError("invalid_payload", "payload.multitask must be 'interrupt' or 'reject'", **echo)
    return CodeRunSpec(app_id, text, multitask=Multitask(multitask))


_INVALID_ID_CODES = {"requestId": "invalid_request_id", "messageId": "invalid_message_id"}


def _optional_text(message: dict[str, Any], key: str, limit: int, **echo: str | None) -> str | None:
    value = message.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise ProtocolError(_INVALID_ID_CODES[key], f"{key} must be a string of 1-{limit} characters", **echo)
    return value


def _event_message(event: LoggedEvent, request_id_json: bytes, message_id: str | None) -> str | None:
    """EVENT for a run event, or the terminal message; None for events sockets do not carry."""
    if not event.wire:
        return None  # a chat run's chunk without text
    data = data_json(event)
    terminal = _TERMINAL.get(event.kind)
    if terminal is not None:
        echo = _encoder.encode(message_id)
        return (
            f'{{"type":"{terminal}","requestId":{request_id_json.decode()},"messageId":{echo.decode()},'
            f'"seq":{event.seq},"data":{data.decode()}}}'
        )
    return (
        f'{{"type":"EVENT","requestId":{request_id_json.decode()},"event":"{sse_name(event)}",'
        f'"seq":{event.seq},"data":{data.decode()}}}'
    )


def _error(code: str, message: str, **echo: str | None) -> str:
    body: dict[str, Any] = {"type": "ERROR", "code": code, "message": message}
    body |= {key: value for key, value in echo.items() if value is not None}
    return _encoder.encode(body).decode()


def _unknown_hint(unknown_id: str) -> str:
    return f"no request {unknown_id!r}: INTERRUPT takes the requestId from the ACK"
