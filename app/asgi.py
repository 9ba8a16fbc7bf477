"""The app factory: create_app(settings) wires services, handlers and error mapping."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from litestar import Litestar
from litestar.config.cors import CORSConfig
from litestar.datastructures import CacheControlHeader, MutableScopeHeaders
from litestar.di import Provide
from litestar.enums import ScopeType
from litestar.openapi import OpenAPIConfig
from litestar.static_files import create_static_files_router
from litestar.types import Message, Scope

from app.api.agent_ws import agent_socket
from app.api.apps import AppsController
from app.api.chat import ChatController
from app.api.deps import provide_services, provide_user
from app.api.errors import EXCEPTION_HANDLERS
from app.api.home import healthz, home, metrics, readyz
from app.api.openai_compat import v1_router
from app.api.preview import PreviewController
from app.api.requests import JsonRequest
from app.api.runs import RunsController
from app.api.templates import list_templates
from app.api.workspace import WorkspaceController
from app.logs import configure_logging
from app.services import Services
from app.settings import Settings

log = logging.getLogger(__name__)

# The page's modules are small and change with the server: revalidate rather than cache blind.
WEB_DIR = Path(__file__).resolve().parent / "web"
STATIC_CACHE = CacheControlHeader(no_cache=True)
MAX_REQUEST_ID_CHARS = 128


def create_app_from_env() -> Litestar:
    """The app of one worker process of `runforge serve --workers N` (uvicorn's factory).

    A worker is a new process (multiprocessing's spawn), so it is its own composition root: it
    reads its settings from the environment it inherited, like the CLI, and sets up the CLI's
    logging. The listening socket comes from the parent, so host and port are not used.
    """
    settings = Settings.from_env()
    configure_logging(settings.log_format)
    return create_app(settings)


def create_app(settings: Settings) -> Litestar:
    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services = await Services.start(settings)
        app.state.services = services
        # Everything allocated so far lives as long as the process: keep it out of future
        # collections (measured: full collections of ~180k start-up objects paused 35-90 ms).
        if settings.gc_freeze:
            gc.collect()
            gc.freeze()
        # On SIGTERM, sse-starlette sets shutdown_signal; interrupt runs while streams are
        # still open, so every client gets `interrupted` (reason shutdown) before the exit.
        watcher = asyncio.create_task(_stop_runs_on_signal(services), name="shutdown-watcher")
        try:
            yield
        finally:
            watcher.cancel()
            await services.stop()

    return Litestar(
        route_handlers=[
            home,
            healthz,
            readyz,
            metrics,
            AppsController,
            WorkspaceController,
            PreviewController,
            ChatController,
            RunsController,
            v1_router,
            agent_socket,
            list_templates,
            create_static_files_router(
                path="/static", directories=[WEB_DIR], include_in_schema=False, cache_control=STATIC_CACHE
            ),
        ],
        dependencies={
            "services": Provide(provide_services, sync_to_thread=False),
            "user": Provide(provide_user),
        },
        exception_handlers=EXCEPTION_HANDLERS,
        request_class=JsonRequest,
        lifespan=[lifespan],
        before_send=[echo_request_id],
        request_max_body_size=settings.max_body_bytes,
        cors_config=_cors(settings),
        openapi_config=OpenAPIConfig(title="Runforge", version="0.1.0", path="/schema"),
        # Logging is the process's (app/logs.py, set up by the CLI), not reconfigured per app.
        logging_config=None,
        debug=False,
    )


def _cors(settings: Settings) -> CORSConfig | None:
    """None (no CORS headers at all: only the server's own page may call the API) unless
    RUNFORGE_CORS_ORIGINS names the origins of pages that may."""
    if not settings.cors_origins:
        return None
    return CORSConfig(
        allow_origins=list(settings.cors_origins),
        allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Last-Event-ID", "X-Request-Id"],
        expose_headers=["X-Run-Id", "X-Request-Id", "Retry-After"],
        allow_credentials=False,  # tokens travel as bearer headers; the cookie stays same-site
    )


async def _stop_runs_on_signal(services: Services) -> None:
    await services.shutdown_signal.wait()
    await services.manager.shutdown(services.settings.shutdown_grace_s)


async def echo_request_id(message: Message, scope: Scope) -> None:
    """Echo a client's X-Request-Id on every response, routing errors included.

    A before-send hook only touches the response start message: nothing is buffered, so
    disconnects still reach streaming handlers at once.
    """
    if message["type"] == "http.response.start" and scope["type"] == ScopeType.HTTP:
        headers = MutableScopeHeaders.from_message(message)
        if "x-request-id" in headers:
            return  # the handler set its own (the /v1 proxy: the id of the run it started)
        request_id = _request_id(scope)
        if request_id is not None:
            headers["X-Request-Id"] = request_id


def _request_id(scope: Scope) -> str | None:
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            if 0 < len(text) <= MAX_REQUEST_ID_CHARS and text.isprintable():
                return text
    return None
