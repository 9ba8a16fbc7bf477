"""The simulator served by uvicorn over a real loopback socket: embedded in a daemon thread
(:class:`SimulatorServer`, what `make run` and the tests use) or in the foreground
(``python -m app.simulator``)."""

from __future__ import annotations

import logging
import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn

from app.simulator.asgi import SimulatorApp, create_simulator_app
from app.simulator.config import SimulatorConfig
from app.simulator.recorder import Recorder

_STARTUP_TIMEOUT_S = 10.0
_JOIN_TIMEOUT_S = 5.0


class _ReadyServer(uvicorn.Server):
    """A uvicorn.Server that reports the end of its startup, success or not, via an Event."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self._ready.set()


def bind_socket(host: str, port: int) -> socket.socket:
    # Binding ourselves (instead of letting uvicorn do it) makes port 0 usable: the real
    # port is known before the server thread starts.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def uvicorn_config(app: SimulatorApp, *, embedded: bool) -> uvicorn.Config:
    common: dict[str, Any] = {"lifespan": "off", "ws": "none", "timeout_graceful_shutdown": 1}
    if embedded:
        # uvicorn's logging settings are process-wide: log_config is a dictConfig of the
        # "uvicorn.*" loggers, log_level sets their levels and access_log=False strips the
        # access logger's handlers. Embedded, any of them would reconfigure the host's own
        # uvicorn (the Runforge API server), so leave logging entirely alone.
        return uvicorn.Config(app, log_config=None, log_level=None, **common)
    return uvicorn.Config(app, log_level="warning", access_log=False, **common)


_THREAD_NAME = "runforge-llm-simulator"


class _NotTheSimulatorsLifecycle(logging.Filter):
    """Drops uvicorn's INFO lines ("Started server process", "Shutting down", ...) logged by the
    embedded simulator's own uvicorn server: in the host's process they printed every one of the
    host server's lines twice. Its warnings and errors still go through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.threadName != _THREAD_NAME


def _quiet_lifecycle_lines() -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _NotTheSimulatorsLifecycle) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(_NotTheSimulatorsLifecycle())


class SimulatorServer:
    """Runs the simulator in a daemon thread with its own event loop (and no signal handlers)."""

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config or SimulatorConfig()
        self._host, self._requested_port = host, port
        self._recorder = Recorder()
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._server: _ReadyServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> SimulatorServer:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._socket = bind_socket(self._host, self._requested_port)
        self._port = int(self._socket.getsockname()[1])
        app = create_simulator_app(self._config, self._recorder)
        self._server = _ReadyServer(uvicorn_config(app, embedded=True), self._ready)
        _quiet_lifecycle_lines()
        self._thread = threading.Thread(target=self._serve, name=_THREAD_NAME, daemon=True)
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_S) or not self._server.started:
            self.stop()
            raise RuntimeError("LLM simulator failed to start") from self._failure
        return self

    def _serve(self) -> None:
        assert self._server is not None
        assert self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # uvicorn reports startup failures as SystemExit
            self._failure = exc
        finally:
            self._socket.close()
            self._ready.set()  # unblock start() whatever happened

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(_JOIN_TIMEOUT_S)
        if self._thread.is_alive():  # connections did not drain: stop waiting for them
            self._server.force_exit = True
            self._thread.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
