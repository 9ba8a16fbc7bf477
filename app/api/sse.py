"""Serving a run's events as SSE. The response only follows events; the run lives elsewhere.

Two sources: the run's in-memory log (this worker owns the run), or the run's Redis Stream (another
worker owns it, see app/cluster/streams.py). Both give the same frames, ids included.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from sse_starlette import EventSourceResponse
from sse_starlette.sse import SendTimeoutError
from starlette.types import Message, Receive, Scope, Send

from app.clock import utcnow
from app.control.cancel import StopMode, StopReason
from app.control.request import OnDisconnect
from app.control.run import ACTIVE_STATUSES, Run
from app.errors import BadRequest
from app.http_protocol import abort_connection
from app.services import Services
from app.store.models import RunRow
from app.wire.pieces import pieces
from app.wire.sse import sse_frame

STALLED = "reader stopped reading: disconnected after the send timeout (%.0f s)"
# After SIGTERM, streams get this long to deliver their `interrupted` event.
SHUTDOWN_GRACE_S = 2.0
# Failures after which no worker will publish a run's events any more.
OWNER_GONE = frozenset({"worker_lost", "outcome_lost", "server_restart"})
# How long after a run's end its owner may still be writing a stream Redis lost (see above).
REPUBLISH_GRACE_S = 30.0

log = logging.getLogger(__name__)

# Stops sent to another worker for clients that went away: referenced until they are sent.
_remote_stops: set[asyncio.Task[Any]] = set()


def event_stream(services: Services, run: Run, after_seq: int, on_disconnect: OnDisconnect) -> EventSourceResponse:
    """Follow a run of this worker from its log."""

    async def frames() -> AsyncGenerator[bytes, None]:
        async with contextlib.aclosing(run.log.follow(after_seq)) as batches:
            async for batch in batches:
                # A chat run's chunks without text have no SSE frame: pieces() drops them.
                for piece in pieces(event.wire for event in batch):
                    yield piece
                if batch[-1].kind == "interrupted":  # handed to the connection by now
                    run.note_interrupted_sent()

    def on_lost() -> None:
        run.cancel(StopReason.CLIENT_DISCONNECT)

    return _response(services, run.id, frames(), on_lost if on_disconnect is OnDisconnect.CANCEL else None)


def remote_event_stream(
    services: Services, row: RunRow, after_seq: int, on_disconnect: OnDisconnect
) -> EventSourceResponse:
    """Follow a run of another worker from its Redis Stream (the row says who owns it)."""
    cluster = services.cluster
    assert cluster is not None, "a remote stream needs the cluster"

    async def run_ended(last_seq: int) -> bytes | None:
        fresh = await services.runs.get(row.id) or row
        return terminal_frame(fresh) if _nothing_more_will_come(fresh, last_seq) else None

    def on_lost() -> None:
        stop = cluster.request_stop(row.id, StopReason.CLIENT_DISCONNECT, StopMode.IMMEDIATE)
        task = asyncio.ensure_future(stop)
        _remote_stops.add(task)
        task.add_done_callback(_remote_stops.discard)

    frames = cluster.streams.follow(row.id, after_seq, run_ended)
    return _response(services, row.id, frames, on_lost if on_disconnect is OnDisconnect.CANCEL else None)


def _nothing_more_will_come(row: RunRow, last_seq: int) -> bool:
    """Whether a quiet stream of a recorded run may end with the terminal event from the row.

    Only when its owner is gone (nothing will be published), when the follower has everything
    before the terminal event, or long after the run ended: an owner republishing a stream Redis
    lost (restarted empty) may need a few seconds, and ending earlier would skip events.
    """
    if row.status in ACTIVE_STATUSES:
        return False
    if row.error_code in OWNER_GONE or last_seq >= row.last_seq - 1:
        return True
    return row.ended_at is None or (utcnow() - row.ended_at).total_seconds() > REPUBLISH_GRACE_S


def final_event_stream(services: Services, row: RunRow) -> EventSourceResponse:
    """A finished run whose events are gone: only its terminal event can be given again."""

    async def frames() -> AsyncGenerator[bytes, None]:
        yield terminal_frame(row)

    return _response(services, row.id, frames(), None)


def _response(
    services: Services, run_id: str, frames: AsyncGenerator[bytes, None], on_lost: Callable[[], None] | None
) -> EventSourceResponse:
    lost = False

    def client_lost() -> None:
        nonlocal lost
        if on_lost is not None and not lost:  # reported twice: by the close handler and the generator
            lost = True
            on_lost()

    async def events() -> AsyncIterator[bytes]:
        delivered_terminal = False
        try:
            async with contextlib.aclosing(frames) as source:
                async for frame in source:
                    yield frame
            delivered_terminal = True
        finally:
            # Ended without its terminal event: the client went away, or could not keep up
            # (send timeout), which sse-starlette does not report as a disconnect.
            if not delivered_terminal:
                client_lost()

    async def on_client_close(_: Any) -> None:
        client_lost()

    return _RunEventStream(
        run_id,
        services.settings.send_timeout_s,
        events(),
        headers={"X-Run-Id": run_id},
        ping=services.settings.sse_ping_s,
        client_close_handler_callable=on_client_close,
        shutdown_event=services.shutdown_signal,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
    )


class _RunEventStream(EventSourceResponse):
    """An SSE response that drops its connection when it cannot complete: a reader that took no
    write for the send timeout (one log line, not a traceback), or a stream cut at shutdown.

    Dropped, not closed: a close would keep what is buffered until the reader leaves, and uvicorn
    would log the unfinished response as an error (app/http_protocol.py)."""

    def __init__(self, run_id: str, send_timeout_s: float, content: AsyncIterator[bytes], **kwargs: Any) -> None:
        super().__init__(content, send_timeout=send_timeout_s, **kwargs)
        self._run_id = run_id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        completed = False

        async def tracked(message: Message) -> None:
            nonlocal completed
            await send(message)
            completed = message["type"] == "http.response.body" and not message.get("more_body", False)

        try:
            await super().__call__(scope, receive, tracked)
        except* SendTimeoutError:
            log.info(STALLED, self.send_timeout, extra={"run_id": self._run_id})
        finally:
            if not completed:
                abort_connection(scope)
                await asyncio.sleep(0)  # its connection_lost runs: uvicorn sees the client gone


def terminal_frame(row: RunRow) -> bytes:
    """A recorded run's terminal event, as the run itself sent it (same id, name and fields)."""
    body: dict[str, Any]
    if row.status == "completed":
        name = "done"
        published = row.published or {"files": [], "previewUrl": None, "checkpoint": None}
        body = {"finishReason": row.finish_reason, "steps": row.steps, "toolCalls": row.tool_calls_executed}
        body.update(published)
    elif row.status == "interrupted":
        name = "interrupted"
        body = {"reason": row.stop_reason, "mode": row.stop_mode or StopMode.IMMEDIATE.value}
    else:
        name = "failed"
        body = {"error": {"code": row.error_code, "message": row.error_message}}
    return sse_frame(row.id, row.last_seq, name, body)


def parse_last_event_id(value: str | None, run_id: str) -> int:
    """``<runId>:<seq>`` -> seq; no header means "from the start"."""
    if not value:
        return 0
    prefix, sep, seq = value.rpartition(":")
    # isascii: str.isdigit() accepts digits such as "²" that int() refuses.
    if not sep or prefix != run_id or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        raise BadRequest(f"Last-Event-ID must be '{run_id}:<seq>'", code="invalid_last_event_id")
    return int(seq)
