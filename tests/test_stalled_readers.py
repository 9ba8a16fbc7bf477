"""A client that stops reading holds a bounded amount of the server's memory, and not for long.

A stream writes in pieces of at most PIECE_BYTES (app/wire/pieces.py), so however far behind
the run a stalled reader is, the server holds one piece beyond the socket's buffers; once a
write has waited for the send timeout, the connection is aborted (app/http_protocol.py) and
that memory is freed at once (an asyncio transport's close() would keep it until the client
leaves). Over a raw socket that reads the headers and then nothing.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from app.settings import Settings
from app.wire.pieces import PIECE_BYTES
from tests.support import HANG_TIMEOUT_S, ServerThread, gen_url, wait_for_status

SEND_TIMEOUT_S = 1.0
HUGE = "[sim:huge tokens=250000]"  # ~15 MB of SSE frames (beyond any kernel buffer), finished before anyone joins
# What uvicorn lets the transport buffer before a send waits for it to drain.
HIGH_WATER = 64 * 1024


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    # The run is kept whole for rejoins (its ~90 MB in memory are over the default cap, under
    # which a stalled reader's whole backlog fits the kernel's socket buffers and costs nothing).
    kept = settings.with_overrides(send_timeout_s=SEND_TIMEOUT_S, max_retained_run_bytes=256 * 1024 * 1024)
    thread = ServerThread(kept).start()
    yield thread
    thread.stop()


def stalled_join(server: ServerThread, token: str, path: str) -> socket.socket:
    """A client that sends the request, reads the status line, and never reads again."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect: a small window
    client.connect(("127.0.0.1", server.port))
    request = f"GET {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\n\r\n"
    client.sendall(request.encode())
    assert client.recv(12) == b"HTTP/1.1 200"
    return client


def wait_until(predicate: object, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.01)  # a state in another thread, with no event to await
    return False


async def test_a_stalled_reader_holds_one_piece_and_is_cut_off_after_the_send_timeout(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str
) -> None:
    url = gen_url(app_id, f"essay {HUGE}", runId="r-huge", onDisconnect="continue")
    async with client.stream("GET", url) as response:
        assert response.status_code == 200
    await wait_for_status(client, "r-huge", "completed")

    stalled = await asyncio.to_thread(stalled_join, server, token, "/runs/r-huge/events")
    port = stalled.getsockname()[1]
    connection = server.connection_from(port)
    assert connection is not None
    # The stream writes until the buffers are full, then waits: what it left buffered is bounded.
    sizes: list[int] = []

    def settled() -> bool:
        sizes.append(connection.transport.get_write_buffer_size())
        return len(sizes) > 20 and len(set(sizes[-20:])) == 1 and sizes[-1] > 0

    assert await asyncio.to_thread(wait_until, settled, HANG_TIMEOUT_S), sizes[-5:]
    assert max(sizes) <= PIECE_BYTES + HIGH_WATER, max(sizes)
    # Past the send timeout the connection is aborted: no buffer kept for a client that may never read.
    began = time.monotonic()
    assert await asyncio.to_thread(wait_until, lambda: server.connection_from(port) is None, HANG_TIMEOUT_S)
    assert time.monotonic() - began < SEND_TIMEOUT_S + 2.0
    stalled.settimeout(HANG_TIMEOUT_S)
    while stalled.recv(1 << 20):  # what the kernel still had, then the end: the server is gone
        pass
    stalled.close()
    assert (await client.get("/healthz")).status_code == 200
