"""Run events as SSE frames: the encoding the run manager gives every run's event log.

Each event is framed once, when it is logged (``id``, event name, one ``data:`` line), and every
follower sends those bytes as they are: the SSE streams, the Redis mirror of other workers, and
the WebSocket transport, which cuts the JSON data out of the frame. Text deltas are the one
unnamed event, so browsers deliver them to ``EventSource.onmessage``.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.control.events import LoggedEvent, RunEvent, TextDelta, UpstreamChunk, UpstreamOpened

__all__ = ["SSE_SEPARATOR", "data_json", "encode_event", "sse_frame", "sse_name"]

SSE_SEPARATOR = "\r\n"  # what sse-starlette uses for its own frames (pings)
_DATA_FIELD = b"data: "
_encoder = msgspec.json.Encoder()


def encode_event(run_id: str, seq: int, event: RunEvent) -> LoggedEvent:
    """The event as its log keeps it (an ``EventEncoder``, app/control/event_log.py).

    A chat run's upstream chunk keeps its upstream frame for the /v1 client; followers see its
    text as a plain message, and nothing of a chunk without text or of ``upstream_opened``.
    """
    if isinstance(event, UpstreamChunk):
        wire = sse_frame(run_id, seq, TextDelta.kind, event.payload()) if event.text else b""
        return LoggedEvent(seq, event.kind, wire, event.frame)
    if isinstance(event, UpstreamOpened):
        return LoggedEvent(seq, event.kind, b"")
    return LoggedEvent(seq, event.kind, sse_frame(run_id, seq, event.kind, event.payload()))


def sse_frame(run_id: str, seq: int, name: str, body: dict[str, Any]) -> bytes:
    """One frame, its id ``<runId>:<seq>`` and ``runId`` added to its data."""
    # Compact JSON never contains a raw newline, so the data fits one `data:` line.
    data = _encoder.encode({**body, "runId": run_id}).decode()
    event = "" if name == TextDelta.kind else f"event: {name}{SSE_SEPARATOR}"
    return f"id: {run_id}:{seq}{SSE_SEPARATOR}{event}data: {data}{SSE_SEPARATOR}{SSE_SEPARATOR}".encode()


def sse_name(event: LoggedEvent) -> str:
    """The event's name on the SSE stream (and in WebSocket ``EVENT`` messages)."""
    return TextDelta.kind if event.kind == UpstreamChunk.kind else event.kind


def data_json(event: LoggedEvent) -> bytes:
    """The event's JSON data, cut from its SSE frame (the frame's one ``data:`` line)."""
    start = event.wire.find(_DATA_FIELD) + len(_DATA_FIELD)
    return event.wire[start : -2 * len(SSE_SEPARATOR)]
