"""Test harness: a real uvicorn server in its own thread, and SSE helpers.

The server runs on its own event loop (as in production, apart from the test's client), on a
socket bound to port 0; the embedded simulator is reached over real loopback sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import uvicorn
from httpx_sse import aconnect_sse

from app.asgi import create_app
from app.http_protocol import AbortingHttpProtocol
from app.services import Services
from app.settings import Settings
from app.simulator import RequestRecord, SimulatorServer

T = TypeVar("T")
TERMINAL = ("done", "interrupted", "failed")
HANG_TIMEOUT_S = 10.0  # generous: only there to turn a hang into a failure


class ServerThread:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.app = create_app(settings)
        # An explicit IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted connections
        # (with proto 0 it does not, and responses wait ~40 ms for Nagle's algorithm).
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        self._sock.bind(("127.0.0.1", 0))
        self.port: int = self._sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(self.app, log_level="warning", timeout_graceful_shutdown=3, http=AbortingHttpProtocol)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._run, name="test-server", daemon=True)
        self.loop: asyncio.AbstractEventLoop | None = None

    def _run(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self.loop = asyncio.get_running_loop()
        await self._server.serve(sockets=[self._sock])

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + HANG_TIMEOUT_S
        while not self._server.started:  # uvicorn exposes no event for "started"
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("test server did not start")
            time.sleep(0.005)
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(HANG_TIMEOUT_S)

    def terminate(self) -> None:
        """Exit as on SIGTERM: runs are interrupted (reason shutdown) while their streams are open.

        In a thread uvicorn installs no signal handlers, so sse-starlette cannot see the exit;
        this sets the event it would have set, then asks uvicorn to exit.
        """
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.services.shutdown_signal.set)
        self.stop()

    def requests_in_flight(self) -> int:
        """HTTP requests (streams included) the server is still handling, and connections still
        open (whose requests it may not have read yet)."""
        return len(self._server.server_state.tasks) + len(self._server.server_state.connections)

    def connection_from(self, client_port: int) -> Any | None:
        """The server's protocol object of the connection from this client port, if it is open."""
        for protocol in list(self._server.server_state.connections):
            if getattr(protocol, "client", None) == ("127.0.0.1", client_port):
                return protocol
        return None

    @property
    def services(self) -> Services:
        services: Services = self.app.state.services
        return services

    @property
    def simulator(self) -> SimulatorServer:
        assert self.services.simulator is not None
        return self.services.simulator

    def call(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the server's loop (for set-up that has no HTTP API)."""
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(HANG_TIMEOUT_S)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        assert self.loop is not None
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def add_user(self, name: str) -> str:
        _, token = self.call(self.services.users.create(name))
        return token

    async def sim_records(self, run_id: str, predicate: Callable[[list[RequestRecord]], bool]) -> list[RequestRecord]:
        """Wait until the simulator's records for run_id satisfy predicate; return them."""
        recorder = self.simulator.recorder

        def check(records: list[RequestRecord]) -> bool:
            return predicate([r for r in records if r.run_id == run_id])

        ok = await asyncio.to_thread(recorder.wait_for, check, HANG_TIMEOUT_S)
        records = recorder.records(run_id)
        assert ok, f"simulator records for {run_id} never matched: {records}"
        return records


@dataclass
class Event:
    event: str
    id: str
    data: dict[str, Any]

    @property
    def seq(self) -> int:
        return int(self.id.rpartition(":")[2])


async def wait_for_status(client: httpx.AsyncClient, run_id: str, status: str) -> dict[str, Any]:
    """Poll GET /runs/{id} (the public view) until the run has recorded its final status."""
    latest: dict[str, Any] = {}
    async with asyncio.timeout(HANG_TIMEOUT_S):
        while latest.get("status") != status or latest.get("live"):
            if latest:
                await asyncio.sleep(0.005)
            latest = (await client.get(f"/runs/{run_id}")).json()
    return latest


@contextlib.asynccontextmanager
async def open_stream(
    client: httpx.AsyncClient, method: str, url: str, **kwargs: Any
) -> AsyncIterator[tuple[httpx.Response, AsyncIterator[Event]]]:
    async with aconnect_sse(client, method, url, **kwargs) as source:

        async def events() -> AsyncIterator[Event]:
            async for sse in source.aiter_sse():
                if not sse.data:
                    continue  # a keepalive comment
                yield Event(sse.event or "message", sse.id, json.loads(sse.data))

        yield source.response, events()


async def collect(events: AsyncIterator[Event], until: Callable[[Event], bool] | None = None) -> list[Event]:
    """Read events until `until` matches (inclusive) or the stream ends."""
    seen: list[Event] = []
    async with asyncio.timeout(HANG_TIMEOUT_S):
        async for event in events:
            seen.append(event)
            if until is not None and until(event):
                break
    return seen


def text_of(events: list[Event]) -> str:
    return "".join(e.data["d"] for e in events if e.event == "message")


def gen_url(app_id: str, message: str, **params: str) -> str:
    return "/app/chat/gen/code?" + httpx.QueryParams({"appId": app_id, "message": message, **params}).__str__()
