"""uvicorn's HTTP protocol, changed in one way: a response that cannot complete drops its connection.

When an app gives up on a response it has started (a stream whose reader stopped reading for the
send timeout, a stream cut at shutdown, an error mid-body), uvicorn closes the transport. An
asyncio transport's ``close()`` first flushes what is buffered, so a reader that never reads again
keeps the buffer, and the socket, until it leaves: measured, ten stalled rejoins of a finished
15 MB run held +295 MB. The response is broken anyway (its client cannot use half a body), so
here such a close is an ``abort()``: buffer and socket are freed at once. Every other close (a
finished response on a ``Connection: close``, an idle keep-alive) still flushes.

The app can also drop its connection itself: every request's scope carries
``extensions["runforge.abort_connection"]`` (see :func:`abort_connection`). A stream that gives
up on a stalled reader does, so that uvicorn sees a client gone rather than an app that left a
response unfinished (which it logs as an error).

Used by `runforge serve` (app/cli.py) and the tests' servers: ``uvicorn.Config(http=...)``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

ABORT_EXTENSION = "runforge.abort_connection"


def abort_connection(scope: Mapping[str, Any]) -> None:
    """Drop the request's connection now, discarding what is buffered for it (a no-op under a
    server that does not offer it)."""
    abort = scope.get("extensions", {}).get(ABORT_EXTENSION)
    if abort is not None:
        abort()


class AbortingHttpProtocol(HttpToolsProtocol):
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(_AbortIfBroken(transport, self))  # type: ignore[arg-type]

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.scope["extensions"] = {ABORT_EXTENSION: self._abort}  # type: ignore[dict-item]

    def _abort(self) -> None:
        self.transport.abort()


class _AbortIfBroken:
    """The connection's transport, whose ``close()`` aborts while a response is half sent."""

    def __init__(self, transport: asyncio.Transport, protocol: AbortingHttpProtocol) -> None:
        self._transport = transport
        self._protocol = protocol

    def close(self) -> None:
        cycle = self._protocol.cycle
        if cycle is not None and cycle.response_started and not cycle.response_complete:
            self._transport.abort()
        else:
            self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)
