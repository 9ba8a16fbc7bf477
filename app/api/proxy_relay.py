"""Writing a chat run to its /v1 client over raw ASGI.

The chat-completions route is a plain ASGI handler so that nothing sits between the client's
socket and this code: no buffering, and ``http.disconnect`` is seen the moment it arrives (a
watcher awaits ``receive()`` during the whole response, before the first token too). Every way
the response can end without its last byte — the client closes, a send fails, a send blocks
for the send timeout (``send_timeout_s``) — stops the run, which closes the upstream connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import msgspec
from litestar.types import Receive, Scope, Send

from app.api.errors import http_status
from app.control.cancel import StopReason
from app.control.events import Done, Failed, Interrupted, LoggedEvent, UpstreamOpened
from app.control.run import Run
from app.http_protocol import abort_connection
from app.proxy.errors import openai_error, upstream_failure
from app.proxy.exchange import DONE_FRAME, ChatExchange, error_frame
from app.wire.pieces import pieces

_STREAM_HEADERS = (
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),  # tell nginx-style proxies not to buffer the stream
)


log = logging.getLogger(__name__)
STALLED = "client stopped reading: disconnected after the send timeout (%.0f s)"


class ClientGone(Exception):
    """The client closed the connection, or stopped reading."""


class AsgiReply:
    """The send side of one response, with a send timeout and disconnects as ClientGone."""

    def __init__(self, scope: Scope, send: Send, request_id: str | None, timeout_s: float) -> None:
        self._scope = scope
        self._request_id = request_id
        self._send = send
        self._timeout_s = timeout_s
        self._id_headers = [(b"x-request-id", request_id.encode())] if request_id else []
        self.started = False

    async def start(self, status: int, headers: Sequence[tuple[bytes, bytes]]) -> None:
        self.started = True
        await self._deliver({"type": "http.response.start", "status": status, "headers": [*headers, *self._id_headers]})

    async def body(self, data: bytes, *, more: bool) -> None:
        await self._deliver({"type": "http.response.body", "body": data, "more_body": more})

    async def json(self, status: int, body: bytes, extra_headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
        headers = ((b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()))
        await self.start(status, [*headers, *extra_headers])
        await self.body(body, more=False)

    async def _deliver(self, message: dict[str, object]) -> None:
        try:
            async with asyncio.timeout(self._timeout_s):
                await self._send(message)  # type: ignore[arg-type]
        except (OSError, TimeoutError) as exc:  # uvicorn raises ClientDisconnected, an OSError
            if isinstance(exc, TimeoutError):
                log.info(STALLED, self._timeout_s, extra={"run_id": self._request_id})
            # Nothing more can be sent: free what is buffered for the client, and let uvicorn
            # see a client gone instead of a response left unfinished.
            abort_connection(self._scope)
            raise ClientGone from exc


async def relay(run: Run, exchange: ChatExchange, reply: AsgiReply, receive: Receive) -> None:
    """Answer the client from the run, streaming or whole; a client that leaves stops the run."""
    watcher = asyncio.create_task(_stop_on_disconnect(receive, run), name=f"disconnect-watch:{run.id}")
    answered = False
    try:
        if exchange.request.stream:
            await _stream(run, exchange, reply)
        else:
            await _whole(run, exchange, reply)
        answered = True
    except ClientGone:
        pass
    finally:
        if not answered:
            run.cancel(StopReason.CLIENT_DISCONNECT)
        run.log.drop_relay()  # this response was their only reader, and the log is closed by now
        watcher.cancel()
        await asyncio.wait({watcher})


async def _stop_on_disconnect(receive: Receive, run: Run) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    run.cancel(StopReason.CLIENT_DISCONNECT)  # a no-op once the run has ended


async def _stream(run: Run, exchange: ChatExchange, reply: AsgiReply) -> None:
    """Relay each upstream event as it is logged; end the way the run ended.

    The headers go out once the upstream has accepted the request (``upstream_opened``), not
    before: until then an upstream failure can still be answered with its own status and body.
    """
    async with contextlib.aclosing(run.log.follow()) as batches:
        async for batch in batches:
            data = [event.relay for event in batch if event.relay]
            opened = reply.started or bool(data) or any(e.kind == UpstreamOpened.kind for e in batch)
            if _ended(batch):
                ending = _stream_ending(run, exchange, batch[-1], started=opened)
                if ending is None:
                    await _answer_failure(run, exchange, reply)
                    return
                data.append(ending)
            if (opened or any(data)) and not reply.started:  # data: e.g. a stop before the upstream answered
                await reply.start(200, _STREAM_HEADERS)
            for piece in pieces(data):  # bounded writes: a stalled client holds one piece
                await reply.body(piece, more=True)
    await reply.body(b"", more=False)


def _stream_ending(run: Run, exchange: ChatExchange, last: LoggedEvent, *, started: bool) -> bytes | None:
    """The bytes that end the stream; None for a failure that is still answerable as an error."""
    if run.rejection is None:
        if last.kind == Done.kind:
            return DONE_FRAME
        if last.kind == Interrupted.kind:
            return exchange.closing_frames()  # a stopped stream ends like a complete one
    if not started:
        return None
    status, body = _failure(run, exchange)
    error: dict[str, Any] = body["error"]  # an OpenAI-shaped error body, ours or the upstream's
    return error_frame(str(error.get("code") or "upstream_error"), str(error.get("message") or f"HTTP {status}"))


async def _whole(run: Run, exchange: ChatExchange, reply: AsgiReply) -> None:
    """Non-streaming: wait for the run's end, then answer the whole (or partial) message."""
    last_kind = ""
    async with contextlib.aclosing(run.log.follow()) as batches:
        async for batch in batches:
            last_kind = batch[-1].kind
    if last_kind in (Done.kind, Interrupted.kind) and run.rejection is None:
        await reply.json(200, exchange.completion())
    else:
        await _answer_failure(run, exchange, reply)


async def _answer_failure(run: Run, exchange: ChatExchange, reply: AsgiReply) -> None:
    status, body = _failure(run, exchange)
    await reply.json(status, _encode(body))


def _failure(run: Run, exchange: ChatExchange) -> tuple[int, dict[str, Any]]:
    """Why the run did not answer: refused after its start, or failed (upstream or not)."""
    if run.rejection is not None:
        status = http_status(run.rejection)
        return status, openai_error(status, run.rejection.code, run.rejection.message)
    error = run.error or Failed("internal", "the run failed")
    return upstream_failure(exchange.upstream_error, error.code, error.message)


def _ended(batch: list[LoggedEvent]) -> bool:
    return batch[-1].kind in (Done.kind, Interrupted.kind, Failed.kind)


def _encode(body: object) -> bytes:
    return msgspec.json.encode(body)
