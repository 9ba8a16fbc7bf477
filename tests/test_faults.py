"""The issue's fault list, each with its defined outcome (the table is in docs/reliability.md).

Upstream faults go through a standalone simulator behind a TCP proxy (tests/fault_proxy.py), so
the connection itself can be refused or reset, as well as the answer be broken. Local faults are
injected in the server's own process: an OS error on the workspace's writes, an exclusive lock
on the SQLite file from another connection. Every test checks four things:

* what the client sees: a ``failed`` event with a clear code, or a tool error the model sees;
* the server stays healthy: /healthz, and a following run on a new app completes;
* nothing half-written: no partial or temp file, no history rows of the broken run;
* nothing leaked: no active run or run task in the manager, no upstream request left open.

SIGTERM and ``kill -9`` need a process of their own: tests/test_processes.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import itertools
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.control.run import RunStatus
from app.settings import LLMSettings, Settings
from app.simulator import SimulatorConfig, SimulatorServer
from app.store import db as db_module
from app.workspace.fs import is_temp_name
from tests.fault_proxy import TcpProxy, tcp_proxy
from tests.support import HANG_TIMEOUT_S, Event, ServerThread, collect, gen_url, open_stream, wait_for_status

STALL_TIMEOUT_S = 1.0  # RUNFORGE_LLM_TIMEOUT_S here: an upstream silent this long fails the run
MAX_STEPS = 4  # RUNFORGE_MAX_STEPS here: codegen and the tool faults need 3 steps
SHORT_BUSY_MS = 200  # SQLite's busy timeout for the tests where a lock outlasts it
LONG = "[sim:long_text pace=5 tokens=100000]"  # ~8 minutes of text: only a fault or a stop ends it
_ids = itertools.count(1)


@dataclass
class Rig:
    server: ServerThread
    client: httpx.AsyncClient
    sim: SimulatorServer  # the upstream, reached only through the proxy
    proxy: TcpProxy

    @property
    def db_path(self) -> Path:
        return self.server.settings.data_dir / "runforge.db"

    def workspace(self, app_id: str) -> Path:
        return self.server.settings.workspaces_dir / app_id


@contextlib.asynccontextmanager
async def open_rig(settings: Settings) -> AsyncIterator[Rig]:
    with SimulatorServer(SimulatorConfig(pace_ms=2.0)) as sim:
        async with tcp_proxy(sim.port) as proxy:
            llm = LLMSettings(
                base_url=f"http://127.0.0.1:{proxy.port}/v1", api_key="k", max_retries=0, timeout_s=STALL_TIMEOUT_S
            )
            server = ServerThread(settings.with_overrides(llm=llm, max_steps=MAX_STEPS)).start()
            try:
                headers = {"Authorization": f"Bearer {server.add_user('alice')}"}
                async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30.0) as client:
                    yield Rig(server, client, sim, proxy)
            finally:
                # In a thread: the proxy's pumps run on this loop, and must keep running meanwhile.
                await asyncio.to_thread(server.stop)


@pytest.fixture
async def rig(settings: Settings) -> AsyncIterator[Rig]:
    async with open_rig(settings) as opened:
        yield opened


@pytest.fixture
def sqlite_only(test_database_url: str | None) -> None:
    if test_database_url is not None:
        pytest.skip("a lock on the SQLite file is the fault injected here")


@pytest.fixture
async def short_busy_rig(settings: Settings, monkeypatch: pytest.MonkeyPatch, sqlite_only: None) -> AsyncIterator[Rig]:
    """SQLite's busy timeout cut from 5 s, so a lock can outlast it without a slow test."""
    monkeypatch.setattr(db_module, "SQLITE_BUSY_TIMEOUT_MS", SHORT_BUSY_MS)
    async with open_rig(settings) as opened:
        yield opened


# -- helpers ---------------------------------------------------------------------------------


async def new_app(client: httpx.AsyncClient, kind: str = "vue_project") -> str:
    response = await client.post("/apps", json={"name": "faults", "codeGenType": kind})
    assert response.status_code == 201, response.text
    app_id: str = response.json()["id"]
    return app_id


def new_run_id(name: str) -> str:
    return f"r-{name}-{next(_ids)}"


async def run_to_end(client: httpx.AsyncClient, url: str) -> list[Event]:
    async with open_stream(client, "GET", url) as (response, events):
        assert response.status_code == 200
        return await collect(events)


def error_of(events: list[Event]) -> str:
    assert [e.event for e in events if e.event in ("done", "interrupted", "failed")] == [events[-1].event]
    assert events[-1].event == "failed", events[-1]
    message = events[-1].data["error"]["message"]
    assert isinstance(message, str)
    assert message
    code: str = events[-1].data["error"]["code"]
    return code


def tool_results(events: list[Event]) -> list[tuple[str, bool, str]]:
    return [(e.data["name"], e.data["ok"], e.data["summary"]) for e in events if e.event == "tool_result"]


def files_on_disk(root: Path) -> dict[str, bytes]:
    """Every file under root by relative path (temp files included: none may be left)."""
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


async def history(client: httpx.AsyncClient, app_id: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = (await client.get(f"/apps/{app_id}/messages")).json()
    return messages


async def assert_nothing_half_written(rig: Rig, app_id: str, before: dict[str, bytes] | None = None) -> None:
    """The app's files are as they were (or, without ``before``, free of temp files) and it has no history."""
    files = files_on_disk(rig.workspace(app_id))
    assert not [name for name in files if is_temp_name(Path(name).name)], files
    if before is not None:
        assert files == before
    assert await history(rig.client, app_id) == []


async def until(rig: Rig, predicate: Callable[[], bool]) -> None:
    """Until ``predicate`` holds, evaluated on the server's loop (it reads the server's state)."""

    async def check() -> bool:
        return predicate()

    async with asyncio.timeout(HANG_TIMEOUT_S):
        while not await rig.server.acall(check()):  # noqa: ASYNC110 - the manager announces nothing
            await asyncio.sleep(0.005)


async def assert_no_leak(rig: Rig) -> None:
    """No run active, no run task alive, no upstream request left open (waited for: each ends
    a moment after its run's terminal event)."""
    manager = rig.server.services.manager
    await until(rig, lambda: not manager.active_count and not manager.task_count)
    health = (await rig.client.get("/healthz")).json()
    assert (health["status"], health["activeRuns"], health["runTasks"]) == ("ok", 0, 0)
    closed = await asyncio.to_thread(
        rig.sim.recorder.wait_for, lambda rs: not any(r.is_open for r in rs), HANG_TIMEOUT_S
    )
    assert closed, [r for r in rig.sim.recorder.records() if r.is_open]


async def assert_healthy(rig: Rig) -> None:
    """Nothing leaked, and a following run on a new app completes with its files and its turn."""
    await assert_no_leak(rig)
    app_id = await new_app(rig.client)
    run_id = new_run_id("after")
    seen = await run_to_end(rig.client, gen_url(app_id, "a counter site [sim:codegen]", runId=run_id))
    assert seen[-1].event == "done", seen[-1]
    await wait_for_status(rig.client, run_id, "completed")
    assert set(files_on_disk(rig.workspace(app_id))) == {"index.html", "style.css", "script.js"}
    assert len(await history(rig.client, app_id)) == 2
    await assert_no_leak(rig)


async def assert_failed_cleanly(rig: Rig, app_id: str, run_id: str, code: str) -> None:
    row = await wait_for_status(rig.client, run_id, "failed")
    assert row["error"]["code"] == code
    await assert_nothing_half_written(rig, app_id, before={})
    await assert_healthy(rig)


# == upstream ==================================================================================


async def test_refused_connection_fails_the_run_upstream_unavailable(rig: Rig) -> None:
    await rig.proxy.refuse()
    app_id, run_id = await new_app(rig.client), new_run_id("refused")
    seen = await run_to_end(rig.client, gen_url(app_id, "a counter site", runId=run_id))
    assert error_of(seen) == "upstream_unavailable"
    assert rig.sim.recorder.records(run_id) == []  # nothing reached the provider
    await rig.proxy.listen_again()
    await assert_failed_cleanly(rig, app_id, run_id, "upstream_unavailable")


@pytest.mark.parametrize(
    ("status", "code"), [(500, "upstream_error"), (429, "upstream_rate_limited"), (503, "upstream_error")]
)
async def test_an_error_status_at_start_fails_the_run(rig: Rig, status: int, code: str) -> None:
    app_id, run_id = await new_app(rig.client), new_run_id(f"http-{status}")
    seen = await run_to_end(rig.client, gen_url(app_id, f"hi [sim:http_error status={status}]", runId=run_id))
    assert error_of(seen) == code
    assert not [e for e in seen if e.event == "message"]
    [record] = rig.sim.recorder.records(run_id)  # no retry (max_retries=0 here)
    assert record.status == status
    await assert_failed_cleanly(rig, app_id, run_id, code)


async def test_a_connection_reset_mid_stream_fails_the_run_upstream_unavailable(rig: Rig) -> None:
    app_id, run_id = await new_app(rig.client), new_run_id("reset")
    async with open_stream(rig.client, "GET", gen_url(app_id, f"essay {LONG}", runId=run_id)) as (_, events):
        before = await collect(events, until=lambda e: e.event == "message" and e.seq >= 5)
        rig.proxy.down()  # RST on both sides of every proxied connection
        rig.proxy.up()
        after = await collect(events)
    assert {e.event for e in after[:-1]} <= {"message"}
    assert error_of(before + after) == "upstream_unavailable"
    await assert_failed_cleanly(rig, app_id, run_id, "upstream_unavailable")


@pytest.mark.parametrize("scenario", ["slow_headers", "slow_first_token"])
async def test_an_upstream_that_sends_nothing_times_out(rig: Rig, scenario: str) -> None:
    """No headers, or headers and then no byte: the run fails after the configured read timeout
    (RUNFORGE_LLM_TIMEOUT_S, 1 s here), not after the simulator's 30 s."""
    app_id, run_id = await new_app(rig.client), new_run_id(scenario)
    started = time.monotonic()
    seen = await run_to_end(rig.client, gen_url(app_id, f"hi [sim:{scenario} delay=30]", runId=run_id))
    elapsed = time.monotonic() - started
    assert error_of(seen) == "upstream_timeout"
    assert STALL_TIMEOUT_S <= elapsed < STALL_TIMEOUT_S + 5.0, elapsed
    await assert_failed_cleanly(rig, app_id, run_id, "upstream_timeout")
    # The simulator saw the client go away while it was still stalling.
    [record] = rig.sim.recorder.records(run_id)
    assert record.disconnected_at is not None
    assert record.chunks_sent == 0


@pytest.mark.parametrize(
    ("scenario", "code"), [("malformed", "upstream_malformed"), ("error_midstream", "upstream_error")]
)
async def test_a_broken_chunk_fails_the_run(rig: Rig, scenario: str, code: str) -> None:
    """A chunk that is not JSON, or an error object in the stream, after some text."""
    app_id, run_id = await new_app(rig.client), new_run_id(scenario)
    seen = await run_to_end(rig.client, gen_url(app_id, f"hi [sim:{scenario}]", runId=run_id))
    assert [e for e in seen if e.event == "message"]  # text had streamed: it is not saved
    assert error_of(seen) == code
    await assert_failed_cleanly(rig, app_id, run_id, code)


# == the model's tool calls ====================================================================


async def completed_with_tool_errors(rig: Rig, scenario: str, steps: int) -> tuple[str, list[Event]]:
    app_id, run_id = await new_app(rig.client), new_run_id(scenario)
    seen = await run_to_end(rig.client, gen_url(app_id, f"go [sim:{scenario}]", runId=run_id))
    assert seen[-1].event == "done", seen[-1]
    row = await wait_for_status(rig.client, run_id, "completed")
    assert row["steps"] == steps
    # Each tool result went back to the model in the following request.
    records = rig.sim.recorder.records(run_id)
    assert [r.tool_results_seen for r in records] == list(range(steps))
    return app_id, seen


async def test_invalid_json_in_tool_arguments_is_a_tool_error_the_model_sees(rig: Rig) -> None:
    app_id, seen = await completed_with_tool_errors(rig, "bad_tool_args", steps=3)
    [(name, ok, summary), fixed] = tool_results(seen)
    assert (name, ok) == ("write_file", False)
    assert summary.startswith("error: invalid arguments for write_file")
    assert fixed[:2] == ("write_file", True)
    assert set(files_on_disk(rig.workspace(app_id))) == {"fixed.txt"}  # no broken.txt, no temp file
    await assert_healthy(rig)


async def test_an_unknown_tool_is_a_tool_error_the_model_sees(rig: Rig) -> None:
    app_id, seen = await completed_with_tool_errors(rig, "unknown_tool", steps=2)
    [(name, ok, summary)] = tool_results(seen)
    assert (name, ok) == ("run_shell", False)
    assert summary.startswith("error: unknown tool 'run_shell'")
    assert files_on_disk(rig.workspace(app_id)) == {}
    await assert_healthy(rig)


async def test_huge_tool_arguments_are_a_tool_error_the_model_sees(rig: Rig) -> None:
    """3 MiB of arguments, over the 2 MiB limit: refused before parsing, nothing written; the
    model writes a small file next."""
    app_id, seen = await completed_with_tool_errors(rig, "huge_tool_args", steps=3)
    [(name, ok, summary), small] = tool_results(seen)
    assert (name, ok) == ("write_file", False)
    assert "too large" in summary
    assert small[:2] == ("write_file", True)
    [call, _] = [e for e in seen if e.event == "tool_call"]
    assert call.data["args"]["path"] == "big.txt"
    assert len(call.data["args"]["content"]) < 300  # the event carries a preview, not 3 MiB
    assert files_on_disk(rig.workspace(app_id)) == {"small.txt": b"Small content.\n"}
    await assert_healthy(rig)


async def test_an_endless_tool_loop_ends_at_max_steps(rig: Rig) -> None:
    app_id, run_id = await new_app(rig.client), new_run_id("loop")
    seen = await run_to_end(rig.client, gen_url(app_id, "look around [sim:loop]", runId=run_id))
    assert seen[-1].event == "done"
    assert (seen[-1].data["finishReason"], seen[-1].data["steps"]) == ("max_steps", MAX_STEPS)
    assert len(rig.sim.recorder.records(run_id)) == MAX_STEPS  # no request after the last step
    row = await wait_for_status(rig.client, run_id, "completed")
    assert row["finishReason"] == "max_steps"
    assert len(await history(rig.client, app_id)) == 2  # the work so far is real: the turn is saved
    await assert_healthy(rig)


# == the workspace's disk =======================================================================


@contextlib.contextmanager
def failing_writes(root: Path, name: str, error: int) -> Iterator[None]:
    """Writes of files called ``name`` under ``root`` fail with ``error``: ENOSPC at the fsync
    (where a full disk shows up for a buffered write), EROFS at the open (a read-only mount).
    Everything else (SQLite, git, the test itself) writes as usual."""
    real_fsync, real_open = os.fsync, os.open

    def hit(path: str) -> bool:
        target = Path(path)
        return target.is_relative_to(root) and name in target.name

    def fsync(fd: Any) -> None:
        number = fd if isinstance(fd, int) else fd.fileno()
        if error == errno.ENOSPC and hit(os.readlink(f"/proc/self/fd/{number}")):
            raise OSError(error, os.strerror(error))
        real_fsync(fd)

    def open_(path: Any, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
        if error == errno.EROFS and flags & os.O_CREAT and hit(os.fsdecode(path)):
            raise OSError(error, os.strerror(error), os.fsdecode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "fsync", fsync)
        patch.setattr(os, "open", open_)
        yield


DISK_FAULTS = [
    pytest.param(errno.ENOSPC, "No space left on device", id="disk-full"),
    pytest.param(errno.EROFS, "Read-only file system", id="read-only"),
]


@pytest.mark.parametrize(("error", "reason"), DISK_FAULTS)
async def test_a_failing_tool_write_is_a_tool_error_and_leaves_the_old_file(rig: Rig, error: int, reason: str) -> None:
    """vue_project: the model's write_file of style.css fails; the model sees why, its other
    writes go through, the existing style.css keeps its bytes and no temp file is left."""
    app_id, run_id = await new_app(rig.client), new_run_id("tool-write")
    root = rig.workspace(app_id)
    root.mkdir(parents=True, exist_ok=True)
    (root / "style.css").write_bytes(b"p { color: red }\n")
    with failing_writes(rig.server.settings.workspaces_dir, "style.css", error):
        seen = await run_to_end(rig.client, gen_url(app_id, "a counter site [sim:codegen]", runId=run_id))
    assert seen[-1].event == "done"
    results = tool_results(seen)
    assert [(name, ok) for name, ok, _ in results] == [
        ("write_file", True),
        ("write_file", False),
        ("write_file", True),
    ]
    assert results[1][2] == f"error: write_file failed for style.css: {reason}"
    files = files_on_disk(root)
    assert set(files) == {"index.html", "style.css", "script.js"}
    assert files["style.css"] == b"p { color: red }\n"
    assert not [n for n in files if is_temp_name(Path(n).name)]
    await wait_for_status(rig.client, run_id, "completed")
    await assert_healthy(rig)


@pytest.mark.parametrize(("error", "reason"), DISK_FAULTS)
async def test_a_failing_write_while_publishing_fails_the_run_and_rolls_back(rig: Rig, error: int, reason: str) -> None:
    """multi_file: the answer's files are written on completion; style.css fails after
    index.html was written, so the run fails (finalize_failed) and index.html is taken back."""
    app_id, run_id = await new_app(rig.client, "multi_file"), new_run_id("publish")
    root = rig.workspace(app_id)
    root.mkdir(parents=True, exist_ok=True)
    before = {"index.html": b"<p>mine</p>\n"}
    (root / "index.html").write_bytes(before["index.html"])
    with failing_writes(rig.server.settings.workspaces_dir, "style.css", error):
        seen = await run_to_end(rig.client, gen_url(app_id, "a counter site", runId=run_id))
        assert error_of(seen) == "finalize_failed"
        await wait_for_status(rig.client, run_id, "failed")
    await assert_nothing_half_written(rig, app_id, before=before)
    await assert_healthy(rig)


# == the database ===============================================================================


@contextlib.contextmanager
def sqlite_write_lock(path: Path) -> Iterator[sqlite3.Connection]:
    """Another connection holds SQLite's write lock (BEGIN EXCLUSIVE) until the block ends.
    In WAL mode readers go on; every writer waits (busy timeout) or gets "database is locked"."""
    connection = sqlite3.connect(path, isolation_level=None, timeout=HANG_TIMEOUT_S)
    try:
        connection.execute("BEGIN EXCLUSIVE")
        try:
            yield connection
        finally:
            connection.execute("ROLLBACK")
    finally:
        connection.close()


def row_status(path: Path, run_id: str) -> tuple[str, str | None, str | None]:
    with contextlib.closing(sqlite3.connect(path)) as connection:
        row = connection.execute("SELECT status, stop_reason, error_code FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert row is not None, run_id
    return row[0], row[1], row[2]


async def test_a_run_finishing_while_sqlite_is_locked_is_saved_once_the_lock_frees(rig: Rig, sqlite_only: None) -> None:
    """Within the busy timeout (5 s), the completion waits for the lock and is then saved whole."""
    app_id, run_id = await new_app(rig.client), new_run_id("locked")
    manager = rig.server.services.manager
    async with open_stream(rig.client, "GET", gen_url(app_id, "a counter site [sim:codegen]", runId=run_id)) as (
        _,
        events,
    ):
        await collect(events, until=lambda e: e.event == "message")  # its row is written
        with sqlite_write_lock(rig.db_path):
            # Waiting for the lock now, to save its turn.
            await until(rig, lambda: getattr(manager.get(run_id), "status", None) is RunStatus.COMPLETING)
            assert row_status(rig.db_path, run_id)[0] == "running"
        rest = await collect(events)
    assert rest[-1].event == "done"
    row = await wait_for_status(rig.client, run_id, "completed")
    assert row["error"] is None
    assert row_status(rig.db_path, run_id) == ("completed", None, None)
    assert len(await history(rig.client, app_id)) == 2
    await assert_healthy(rig)


async def test_a_lock_that_outlasts_the_busy_timeout_fails_the_run_and_records_it_later(
    short_busy_rig: Rig,
) -> None:
    """Past the busy timeout the turn cannot be saved: the run fails (persist_failed), its files
    go back to how they were, and its row says so once the database takes writes again."""
    rig = short_busy_rig
    app_id, run_id = await new_app(rig.client), new_run_id("outlasts")
    manager = rig.server.services.manager
    async with open_stream(rig.client, "GET", gen_url(app_id, "a counter site [sim:codegen]", runId=run_id)) as (
        _,
        events,
    ):
        await collect(events, until=lambda e: e.event == "message")
        with sqlite_write_lock(rig.db_path):
            seen = await collect(events)
            assert error_of(seen) == "persist_failed"
            await until(rig, lambda: manager.pending_outcome_writes == 1)
            assert row_status(rig.db_path, run_id)[0] == "running"  # the lock still holds
            await assert_nothing_half_written(rig, app_id, before={})  # the tools' files were taken back
        await until(rig, lambda: manager.pending_outcome_writes == 0)
    assert row_status(rig.db_path, run_id) == ("failed", None, "persist_failed")
    assert (await wait_for_status(rig.client, run_id, "failed"))["error"]["code"] == "persist_failed"
    await assert_healthy(rig)


async def test_a_stop_while_the_database_is_unavailable_still_stops_and_is_recorded_later(
    short_busy_rig: Rig,
) -> None:
    """The stop touches no database: 202, `interrupted`, upstream closed, at once. The run's
    row is written (interrupted, user_stop) once the database answers again."""
    rig = short_busy_rig
    app_id, run_id = await new_app(rig.client), new_run_id("stop-db-down")
    manager = rig.server.services.manager
    async with open_stream(rig.client, "GET", gen_url(app_id, f"essay {LONG}", runId=run_id)) as (_, events):
        await collect(events, until=lambda e: e.event == "message")
        with sqlite_write_lock(rig.db_path):
            stop = await rig.client.post("/app/chat/stop", json={"runId": run_id})
            assert (stop.status_code, stop.json()["status"]) == (202, "stopping")
            rest = await collect(events)
            assert rest[-1].event == "interrupted"
            assert rest[-1].data["reason"] == "user_stop"
            await until(rig, lambda: manager.pending_outcome_writes == 1)
            await assert_no_leak(rig)  # the run has ended and its upstream is closed
            assert row_status(rig.db_path, run_id)[0] == "running"
            view = (await rig.client.get(f"/runs/{run_id}")).json()
            assert (view["status"], view["live"]) == ("interrupted", False)  # from memory meanwhile
        await until(rig, lambda: manager.pending_outcome_writes == 0)
    assert row_status(rig.db_path, run_id) == ("interrupted", "user_stop", None)
    assert await history(rig.client, app_id) == []
    await assert_healthy(rig)


async def test_a_start_while_the_database_is_locked_waits_for_it(rig: Rig, sqlite_only: None) -> None:
    """Within the busy timeout, a run started while another connection writes starts once it is done."""
    app_id, run_id = await new_app(rig.client), new_run_id("start-locked")
    manager = rig.server.services.manager
    with sqlite_write_lock(rig.db_path):
        started = asyncio.create_task(run_to_end(rig.client, gen_url(app_id, "a counter site", runId=run_id)))
        await until(rig, lambda: manager.get(run_id) is not None)  # registered, its row waiting for the lock
        assert not started.done()
    seen = await started
    assert seen[-1].event == "done"
    await wait_for_status(rig.client, run_id, "completed")
    await assert_healthy(rig)


async def test_a_start_while_the_database_is_locked_past_the_busy_timeout(short_busy_rig: Rig) -> None:
    rig = short_busy_rig
    app_id, run_id = await new_app(rig.client), new_run_id("start-outlasts")
    with sqlite_write_lock(rig.db_path):
        response = await rig.client.get(gen_url(app_id, "a counter site", runId=run_id))
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "database_unavailable"
    assert (await rig.client.get(f"/runs/{run_id}")).status_code == 404
    await assert_nothing_half_written(rig, app_id, before={})
    await assert_healthy(rig)
