"""Serving a run's event log as SSE. The response only follows the log; the run lives elsewhere."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from sse_starlette import EventSourceResponse

from app.control.cancel import StopReason
from app.control.run import OnDisconnect, Run
from app.errors import BadRequest
from app.services import Services

# A slow reader that cannot take an event within this time is disconnected.
SEND_TIMEOUT_S = 30.0
# After SIGTERM, streams get this long to deliver their `interrupted` event.
SHUTDOWN_GRACE_S = 2.0


def event_stream(services: Services, run: Run, after_seq: int, on_disconnect: OnDisconnect) -> EventSourceResponse:
    async def events() -> AsyncIterator[bytes]:
        delivered_terminal = False
        try:
            async with contextlib.aclosing(run.log.follow(after_seq)) as batches:
                async for batch in batches:
                    wire = b"".join(event.wire for event in batch)
                    if wire:  # a chat run's chunks without text have no SSE frame
                        yield wire
            delivered_terminal = True
        finally:
            # Ended without its terminal event: the client went away, or could not keep up
            # (send timeout), which sse-starlette does not report as a disconnect.
            if not delivered_terminal and on_disconnect is OnDisconnect.CANCEL:
                run.cancel(StopReason.CLIENT_DISCONNECT)

    async def on_client_close(_: Any) -> None:
        if on_disconnect is OnDisconnect.CANCEL:
            run.cancel(StopReason.CLIENT_DISCONNECT)

    return EventSourceResponse(
        events(),
        headers={"X-Run-Id": run.id},
        ping=services.settings.sse_ping_s,
        send_timeout=SEND_TIMEOUT_S,
        client_close_handler_callable=on_client_close,
        shutdown_event=services.shutdown_signal,
        shutdown_grace_period=SHUTDOWN_GRACE_S,
    )


def parse_last_event_id(value: str | None, run_id: str) -> int:
    """``<runId>:<seq>`` -> seq; no header means "from the start"."""
    if not value:
        return 0
    prefix, sep, seq = value.rpartition(":")
    # isascii: str.isdigit() accepts digits such as "²" that int() refuses.
    if not sep or prefix != run_id or not (seq.isascii() and seq.isdigit()) or len(seq) > 18:
        raise BadRequest(f"Last-Event-ID must be '{run_id}:<seq>'", code="invalid_last_event_id")
    return int(seq)
