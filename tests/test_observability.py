"""GET /metrics (Prometheus text), GET /readyz, and log lines that name their run, app and user."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import logging
import os
import re
from collections.abc import Iterator

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url

from app import logs
from app.logs import ContextFilter, JsonFormatter, TextFormatter, bind
from app.settings import Settings
from tests.services import pg_admin
from tests.support import ServerThread, collect, gen_url, open_stream, wait_for_status

SAMPLE = re.compile(r"^(?P<name>[a-z_]+)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"not a sample line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', match["labels"] or ""))
        samples[(match["name"], labels)] = float(match["value"])
    return samples


def sample(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def scrape(client: httpx.AsyncClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    response = await client.get("/metrics", headers={"Authorization": ""})  # needs no token
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return parse_metrics(response.text)


async def test_metrics_count_runs_by_outcome_tool_calls_and_stop_latencies(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    before = await scrape(client)
    assert sample(before, "runforge_active_runs") == 0

    async with open_stream(client, "GET", gen_url(app_id, "hi [sim:long_text pace=5]", runId="m-stop")) as (_, ev):
        await collect(ev, until=lambda e: e.event == "message")
        live = await scrape(client)
        assert (await client.post("/app/chat/stop", json={"runId": "m-stop"})).status_code == 202
        assert (await collect(ev))[-1].event == "interrupted"
    await wait_for_status(client, "m-stop", "interrupted")
    async with open_stream(client, "GET", gen_url(app_id, "files [sim:tools_midstream files=2]", runId="m-ok")) as (
        _,
        ev,
    ):
        assert (await collect(ev))[-1].event == "done"
    await wait_for_status(client, "m-ok", "completed")

    after = await scrape(client)
    assert sample(live, "runforge_active_runs") == 1
    assert sample(after, "runforge_active_runs") == 0
    assert sample(after, "runforge_runs_started_total", kind="code") == 2
    assert sample(after, "runforge_runs_finished_total", kind="code", status="interrupted", reason="user_stop") == 1
    assert sample(after, "runforge_runs_finished_total", kind="code", status="completed", reason="stop") == 1
    assert sample(after, "runforge_tool_calls_total", outcome="executed") == 2
    # One stop: its `interrupted` reached the stream, and its upstream was open and got closed.
    for histogram in ("runforge_stop_to_interrupted_seconds", "runforge_stop_to_upstream_closed_seconds"):
        assert sample(after, f"{histogram}_count") == 1
        assert sample(after, f"{histogram}_bucket", le="+Inf") == 1
        assert 0 < sample(after, f"{histogram}_sum") < 5
    assert sample(after, "runforge_worker_info", worker="single", pid=str(os.getpid())) == 1


async def test_an_upstream_failure_is_counted_by_its_code(client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, "hi [sim:http_error status=503]", runId="m-fail")) as (
        _,
        ev,
    ):
        assert (await collect(ev))[-1].event == "failed"
    await wait_for_status(client, "m-fail", "failed")
    after = await scrape(client)
    assert sample(after, "runforge_upstream_errors_total", code="upstream_error") == 1
    assert sample(after, "runforge_runs_finished_total", kind="code", status="failed", reason="upstream_error") == 1


async def test_readyz_is_ready_with_its_database(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz", headers={"Authorization": ""})
    assert response.status_code == 200
    body = response.json()
    assert {key: body[key] for key in ("status", "checks")} == {
        "status": "ready",
        "checks": {"database": True, "accepting": True},
    }
    assert (body["sandbox"]["kind"], body["sandbox"]["available"]) == ("bubblewrap", True)


async def test_readyz_is_503_naming_the_database_when_it_is_gone(settings: Settings, pg_database_url: str) -> None:
    thread = ServerThread(dataclasses.replace(settings, database_url=pg_database_url)).start()
    try:
        async with httpx.AsyncClient(base_url=thread.url, timeout=30.0) as http:
            assert (await http.get("/readyz")).status_code == 200
            admin = await pg_admin("SELECT 1")
            try:  # the database goes away under the running server
                async with admin.connect() as conn:
                    name = make_url(pg_database_url).database
                    await conn.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
            finally:
                await admin.dispose()
            response = await http.get("/readyz")
            assert response.status_code == 503
            body = response.json()
            assert (body["status"], body["checks"]) == ("unavailable", {"database": False, "accepting": True})
            assert (await http.get("/healthz")).status_code == 200  # alive, only not ready
    finally:
        thread.stop()


# --- logs ------------------------------------------------------------------------------------


@pytest.fixture
def captured() -> Iterator[tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    logger = logging.getLogger("tests.observability")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield logger, stream, handler
    finally:
        logger.removeHandler(handler)


async def test_lines_logged_in_a_bound_task_carry_its_ids_and_other_tasks_do_not(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(JsonFormatter())

    async def run_task() -> None:
        bind(run_id="r1", app_id="a1", user_id="u1")
        logger.info("in the run")
        await asyncio.create_task(child())  # a task it starts inherits the ids

    async def child() -> None:
        logger.warning("in a child", extra={"run_id": "explicit"})

    await asyncio.create_task(run_task())
    logger.info("outside")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["message"], x.get("runId"), x.get("appId"), x.get("userId")) for x in lines] == [
        ("in the run", "r1", "a1", "u1"),
        ("in a child", "explicit", "a1", "u1"),
        ("outside", None, None, None),
    ]
    assert {"ts", "level", "logger"} <= lines[0].keys()


def test_the_process_log_goes_to_stderr_as_it_is_now(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever replaces sys.stderr after setup gets the lines (pytest's capture does, between
    tests): a stream bound at setup would be written to after it was closed."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure_logging("text")
        later = io.StringIO()
        monkeypatch.setattr("sys.stderr", later)
        logging.getLogger("tests.observability.stderr").warning("after the swap")
        logs._stop_listener()  # writes what is queued, then ends the thread
        assert later.getvalue().endswith(" WARNING tests.observability.stderr: after the swap\n"), later.getvalue()
    finally:
        logs._stop_listener()
        root.handlers[:] = handlers
        root.setLevel(level)


async def test_the_text_format_appends_the_ids_before_a_traceback(
    captured: tuple[logging.Logger, io.StringIO, logging.StreamHandler[io.StringIO]],
) -> None:
    logger, stream, handler = captured
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))

    async def run_task() -> None:
        bind(run_id="r2", app_id=None, user_id="u2")
        try:
            raise ValueError("boom")
        except ValueError:
            logger.exception("failed")

    await asyncio.create_task(run_task())
    first, *rest = stream.getvalue().splitlines()
    assert first == "ERROR failed run=r2 user=u2"
    assert rest[0].startswith("Traceback")
    assert rest[-1] == "ValueError: boom"
