"""One HTTP exchange over raw ASGI: the recorded send side of a response, its SSE writer, and the
watcher that notices the client leaving.

A watcher task awaits ASGI ``receive()`` during the whole response, so the moment the client
closes the connection is recorded at once, even while the server sleeps between tokens.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping, Sequence
from typing import Any

from app.simulator.recorder import Recorder

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_BATCH_BYTES = 64 * 1024  # unpaced streams are written in batches; one send per chunk is slow


class _ClientGone(Exception):
    """``send`` failed: the client went away (ASGI servers raise OSError then)."""


class Exchange:
    """The send side of one recorded response; every write is reflected in the record."""

    def __init__(self, send: Send, recorder: Recorder, seq: int) -> None:
        self._send, self._recorder, self.seq = send, recorder, seq

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._deliver({"type": "http.response.start", "status": status, "headers": headers})
        self._recorder.note_status(self.seq, status)

    async def body(self, data: bytes, *, events: int, more: bool) -> None:
        await self._deliver({"type": "http.response.body", "body": data, "more_body": more})
        now = time.monotonic()
        if events:
            self._recorder.note_chunks(self.seq, events, now)
        if not more:
            self._recorder.note_finished(self.seq, now)

    async def json(self, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        await self.start(status, [*_json_headers(body), *extra])
        await self.body(body, events=1, more=False)

    def note_disconnect(self) -> None:
        self._recorder.note_disconnected(self.seq, time.monotonic())

    async def _deliver(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError as exc:
            self.note_disconnect()
            raise _ClientGone from exc


class EventWriter:
    """Writes SSE ``data:`` events, one per paced token, batching them when unpaced."""

    def __init__(self, exchange: Exchange, pace_s: float) -> None:
        self._exchange, self._pace_s = exchange, pace_s
        self._buffer = bytearray()
        self._pending = 0

    async def event(self, data: bytes, *, paced: bool = True) -> None:
        if paced and self._pace_s > 0:
            await asyncio.sleep(self._pace_s)
        self._buffer += b"data: " + data + b"\n\n"
        self._pending += 1
        if self._pace_s > 0 or len(self._buffer) >= _BATCH_BYTES:
            await self._flush(more=True)

    async def close(self) -> None:
        await self._flush(more=False)

    async def _flush(self, *, more: bool) -> None:
        data, events = bytes(self._buffer), self._pending
        self._buffer.clear()
        self._pending = 0
        await self._exchange.body(data, events=events, more=more)
        if more and self._pace_s == 0:
            await asyncio.sleep(0)  # an unpaced stream must still let the disconnect watcher run


SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


async def send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _json_headers(body)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def race_disconnect(receive: Receive, work: Coroutine[Any, Any, None], exchange: Exchange) -> None:
    """Run ``work`` while a watcher awaits ``http.disconnect``; whichever ends first wins.

    The watcher records the disconnect itself, the moment ``receive()`` returns, so the
    timestamp does not wait for the producer to wake up from its pacing sleep.
    """
    producer = asyncio.create_task(work)
    watcher = asyncio.create_task(_watch_disconnect(receive, exchange))
    try:
        await asyncio.wait((producer, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        producer.cancel()
        watcher.cancel()
        await asyncio.gather(producer, watcher, return_exceptions=True)
    if producer.done() and not producer.cancelled():
        error = producer.exception()
        if error is not None and not isinstance(error, _ClientGone):
            raise error


async def _watch_disconnect(receive: Receive, exchange: Exchange) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    # After a completed response uvicorn also reports a disconnect; the recorder ignores it.
    exchange.note_disconnect()
