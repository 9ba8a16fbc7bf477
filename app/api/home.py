"""Sign-in by URL (`/?token=...` sets an HttpOnly cookie), the landing page, and health."""

from __future__ import annotations

import asyncio
import functools
import os
from collections.abc import Awaitable
from importlib import resources
from typing import Any

from litestar import Request, Response, get
from litestar.datastructures import Cookie
from litestar.params import FromQuery
from litestar.response import Redirect
from litestar.status_codes import HTTP_200_OK, HTTP_401_UNAUTHORIZED, HTTP_503_SERVICE_UNAVAILABLE

from app.api.deps import TOKEN_COOKIE, ServicesDep, bearer_token
from app.api.openapi import response
from app.services import Services

COOKIE_MAX_AGE_S = 30 * 24 * 3600
READY_CHECK_TIMEOUT_S = 2.0
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


@functools.cache
def _chat_page_template() -> str:
    return resources.files("app.web").joinpath("index.html").read_text(encoding="utf-8")


def _chat_page(user_name: str) -> str:
    """The chat page (app/web/), told who is signed in."""
    return _chat_page_template().replace("<body>", f'<body data-user="{_escape(user_name)}">', 1)


def _page(title: str, body: str) -> str:
    template = resources.files("app.api").joinpath("home.html").read_text(encoding="utf-8")
    return template.replace("{{title}}", title).replace("{{body}}", body)


@get("/", include_in_schema=False)
async def home(
    request: Request[Any, Any, Any], services: ServicesDep, token: FromQuery[str | None] = None
) -> Response[Any]:
    if token is not None:
        return await _sign_in(services, token)
    current = bearer_token(request)
    user = await services.user_for_token(current) if current else None
    if user is None:
        body = (
            "<p>You are signed out. Open the login URL that <code>runforge serve</code> printed "
            "(<code>/?token=…</code>), or create a token with <code>runforge user add NAME</code>.</p>"
        )
        return Response(_page("Signed out", body), media_type="text/html")
    return Response(_chat_page(user.name), media_type="text/html")


async def _sign_in(services: Services, token: str) -> Response[Any]:
    if await services.user_for_token(token) is None:
        body = "<p>That login link is not valid. Ask for a new one.</p>"
        return Response(_page("Invalid login link", body), media_type="text/html", status_code=HTTP_401_UNAUTHORIZED)
    # Redirect to drop the token from the address bar and history.
    # Strict: a link from another site must not carry the cookie into GET gen/code (CSRF).
    cookie = Cookie(key=TOKEN_COOKIE, value=token, httponly=True, samesite="strict", max_age=COOKIE_MAX_AGE_S)
    return Redirect("/", status_code=303, cookies=[cookie])


@get("/healthz", include_in_schema=True)
async def healthz(services: ServicesDep) -> dict[str, Any]:
    manager = services.manager
    return {
        "status": "ok",
        "llm": "simulator" if services.simulator else "external",
        "activeRuns": manager.active_count,
        "runTasks": manager.task_count,
        "retainedRuns": manager.retained_count,
        # Several workers: this worker's id (runs' `worker`), and runs still being mirrored to Redis.
        "worker": services.cluster.worker_id if services.cluster else None,
        "pid": os.getpid(),
    }


@get(
    "/readyz",
    include_in_schema=True,
    responses={503: response("Not ready: the same body, naming the check that failed (`checks`)")},
)
async def readyz(services: ServicesDep) -> Response[dict[str, Any]]:
    """Ready for traffic: the database answers (and the broker, with several workers), and the
    process is not shutting down. 503 otherwise, naming what failed."""
    checks = {"database": await _within(services.db.reachable())}
    if services.cluster is not None:
        checks["broker"] = await _within(services.cluster.broker_reachable())
    checks["accepting"] = not services.manager.closing
    ready = all(checks.values())
    # Not a check: a server whose builds cannot be sandboxed still serves everything else, and a
    # build then fails sandbox_unavailable. Reported so that an operator sees it (and `none`) here.
    body = {"status": "ready" if ready else "unavailable", "checks": checks, "sandbox": services.sandbox_report()}
    return Response(body, status_code=HTTP_200_OK if ready else HTTP_503_SERVICE_UNAVAILABLE)


async def _within(check: Awaitable[bool]) -> bool:
    try:
        async with asyncio.timeout(READY_CHECK_TIMEOUT_S):
            return await check
    except TimeoutError:
        return False


@get("/metrics", include_in_schema=True, media_type=PROMETHEUS_TEXT)
async def metrics(services: ServicesDep) -> str:
    """This process's metrics in Prometheus' text format (see app/metrics.py)."""
    manager = services.manager
    gauges = [
        ("runforge_active_runs", "Runs active in this process now.", manager.active_count),
        ("runforge_run_tasks", "Run tasks alive in this process now.", manager.task_count),
        ("runforge_retained_runs", "Finished runs kept in memory for rejoins.", manager.retained_count),
        # Every task of the event loop (connections, streams, runs): back to its idle count after load.
        ("runforge_event_loop_tasks", "Tasks alive on this process's event loop now.", len(asyncio.all_tasks())),
    ]
    worker = services.cluster.worker_id if services.cluster else "single"
    return manager.metrics.render(gauges, {"worker": worker, "pid": str(os.getpid())})


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
