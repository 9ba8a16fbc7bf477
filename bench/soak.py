#!/usr/bin/env python3
"""Soak: many concurrent runs for a while, with every way a run can end, then the invariants.

Three processes: the LLM simulator, one Runforge server (SQLite), and this client. The client
keeps ``--concurrency`` slots busy for ``--duration`` seconds (and at most ``--max-runs`` runs).
Each slot runs, one after another and each on a new app, a random mix of:

    complete      a short answer read to its `done`
    tools         a run whose model writes files with the tools, read to `done`
    stop          a long run stopped by POST /app/chat/stop at a random point
    stop_tools    a tools run stopped at a random point
    disconnect    a long run whose client closes the stream at a random point
    supersede     a long run that a second run on the same app interrupts (`superseded`)
    fail          the simulator fails the request: HTTP 500 or 429 at start, an error chunk
                  mid-stream, or a malformed chunk

Afterwards it checks, and prints, counts that must all be zero: a run not in a terminal state
in the database, a stream without exactly one terminal event, events after a terminal event, a
run that ended otherwise than its mix entry says it must, a file written after a stop, tool
calls that do not match the files written, temp files left, an upstream request the server began
sending after it accepted a stop (both on the server's clock: see upstream_after_stop), upstream
connections still open (the simulator's own count), history rows
from interrupted or failed runs, a completed run whose saved answer differs from what was
streamed, runs, run tasks or retained finished runs left in the server, event-loop tasks above the idle count, and RSS
more than ``--rss-tolerance`` above its baseline (taken after a warm-up round of the same mix,
so that the interpreter's high-water mark is not counted as a leak).

    .venv/bin/python bench/soak.py                      # 1000 slots, 60 s, 200 ms a token
    .venv/bin/python bench/soak.py --concurrency 100 --duration 10 --pace-ms 50

Loopback only; bounded by --timeout; the subprocesses are killed on any exit. Exit status 0 when
every count is zero, 1 otherwise, 2 when the soak itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import random
import shutil
import signal
import sqlite3
import ssl
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

# `python bench/soak.py` puts bench/ on the path: the process and workspace helpers are shared.
from stop_latency import (
    FINAL_STATUSES,
    REPO,
    RESULTS_DIR,
    SIGTERM_EXIT,
    TEMP_FILE,
    TERMINAL,
    WORKSPACE_ROOT,
    Child,
    Snapshot,
    loop_factory,
    machine_info,
    percentiles,
    snapshot,
    start_server,
    start_simulator,
    stop_child,
    wait_until_up,
)

CLOSE_AFTER_TERMINAL_S = 5.0  # the server must close a stream this soon after its terminal event
RECORD_TIMEOUT_S = 30.0  # a run must be recorded as final this soon after its stream ended
RECORD_POLL_FIRST_S, RECORD_POLL_CAP_S = 0.05, 1.0
SETTLE_TIMEOUT_S = 30.0  # the server must be idle again this soon after the last run
# Finished runs stay in the server's memory this long (RUNFORGE_FINISHED_RUN_TTL_S, 600 s by
# default) for rejoins: short here, so that the registry must be empty again when RSS is compared.
FINISHED_RUN_TTL_S = 5.0
IDLE_COUNTS = ("active_runs", "run_tasks", "retained_runs", "upstream_open")
HEALTH_PROBE_S = 0.25
# Under uvicorn's 5 s keep-alive timeout: a connection idle that long is never reused, so no request
# races the server closing it (httpx's default expiry is 5 s too, and under load that race is lost).
KEEPALIVE_EXPIRY_S = 2.0
STOP_WINDOW_S = (0.05, 1.5)  # a stop, disconnect or supersede lands this long after the first event
LONG_TOKENS = 4000  # a "long" run cannot finish inside STOP_WINDOW_S at any pace used here
MIX: dict[str, int] = {
    "complete": 20,
    "tools": 10,
    "stop": 20,
    "stop_tools": 10,
    "disconnect": 15,
    "supersede": 10,
    "fail": 15,
}
# (simulator directive, the `failed` code the client must get)
FAULTS = (
    ("http_error status=500", "upstream_error"),
    ("http_error status=429", "upstream_rate_limited"),
    ("error_midstream", "upstream_error"),
    ("malformed", "upstream_malformed"),
)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    concurrency: int
    duration: float
    max_runs: int
    warmup_runs: int
    pace_ms: float
    seed: int
    rss_tolerance: float
    timeout: float
    keep: bool
    asyncio_loop: bool


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--concurrency", type=int, default=1000, help="runs kept in flight at once (default 1000)")
    p.add_argument("--duration", type=float, default=60.0, help="how long new runs are started, s (default 60)")
    p.add_argument("--max-runs", type=int, default=100_000, help="stop starting runs after this many")
    p.add_argument("--warmup-runs", type=int, default=None, help="runs before the RSS baseline (default: 1 per slot)")
    # 1000 streams at 200 ms a token are 5000 events/s through the simulator, the server and this
    # client on one machine: what 2 cores carry (measured: docs/reliability.md).
    p.add_argument("--pace-ms", type=float, default=200.0, help="simulated ms per token (default 200)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--rss-tolerance", type=float, default=0.10, help="allowed RSS growth over the baseline")
    p.add_argument("--timeout", type=float, default=600.0, help="global time limit, s")
    p.add_argument("--keep", action="store_true", help="keep the temp data dir and process logs")
    p.add_argument("--asyncio-loop", action="store_true", help="run this client on asyncio's loop, not uvloop")
    a = p.parse_args(argv)
    if a.concurrency < 1 or a.duration <= 0 or a.max_runs < 1 or a.pace_ms <= 0:
        p.error("need --concurrency >= 1, --duration > 0, --max-runs >= 1, --pace-ms > 0")
    warmup = a.concurrency if a.warmup_runs is None else a.warmup_runs
    return Config(
        a.concurrency, a.duration, a.max_runs, warmup, a.pace_ms, a.seed, a.rss_tolerance, a.timeout, a.keep,
        a.asyncio_loop,
    )  # fmt: skip


# --------------------------------------------------------------------------- one run


@dataclass
class RunResult:
    run_id: str
    app_id: str
    kind: str  # the MIX entry
    expect: str  # the terminal event it must end with (for a disconnect: the recorded status)
    expect_detail: str | None = None  # the interrupted reason or failed code it must carry
    read_to_end: bool = True  # False: the client closed the stream on purpose
    status_code: int | None = None
    error: str | None = None
    terminal: str | None = None
    detail: str | None = None  # reason (interrupted) or error code (failed)
    terminal_events: int = 0
    events_after_terminal: int = 0
    stream_left_open: bool = False
    text: list[str] = field(default_factory=list)
    stop_status: int | None = None
    stop_sent_mono: float | None = None
    stop_sent_wall: float | None = None
    # Where a run's time went (s): opening its stream to its first event, and its stream's end
    # to its record being final (for the report's phase percentiles).
    first_event_s: float | None = None
    record_wait_s: float | None = None
    snap_before: Snapshot = field(default_factory=dict)
    snap_terminal: Snapshot | None = None
    snap_after: Snapshot | None = None
    server: dict[str, Any] = field(default_factory=dict)


class Stream:
    """One run's SSE stream, read in a task: terminal and text are counted as they come."""

    def __init__(self, http: httpx.AsyncClient, result: RunResult, params: dict[str, str], workspace: Path) -> None:
        self.result = result
        self.first_event = asyncio.Event()
        self._opened = time.monotonic()
        self._workspace = workspace
        self.task = asyncio.create_task(self._read(http, params))

    async def _read(self, http: httpx.AsyncClient, params: dict[str, str]) -> None:
        r = self.result
        try:
            async with aconnect_sse(http, "GET", "/app/chat/gen/code", params=params) as source:
                r.status_code = source.response.status_code
                if r.status_code != 200:
                    r.error = f"HTTP {r.status_code}: {(await source.response.aread())[:200]!r}"
                    return
                async with asyncio.timeout(None) as deadline:
                    async for sse in source.aiter_sse():
                        if sse.data and self._on_event(sse.event, json.loads(sse.data)):
                            loop_time = asyncio.get_running_loop().time()
                            deadline.reschedule(loop_time + CLOSE_AFTER_TERMINAL_S)
        except TimeoutError:
            r.stream_left_open = True
        except httpx.HTTPError as exc:
            r.error = f"{type(exc).__name__}: {exc}"
        finally:
            self.first_event.set()  # nobody waits forever on a stream that failed to start

    def _on_event(self, kind: str, data: dict[str, Any]) -> bool:
        r = self.result
        if not self.first_event.is_set():
            r.first_event_s = time.monotonic() - self._opened
            self.first_event.set()
        if r.terminal is not None:
            r.events_after_terminal += 1
            return False
        if kind == "message":
            r.text.append(data.get("d", ""))
        if kind not in TERMINAL:
            return False
        r.terminal, r.terminal_events = kind, r.terminal_events + 1
        r.detail = data.get("reason") or (data.get("error") or {}).get("code")
        r.snap_terminal = snapshot(self._workspace)  # nothing may change in the workspace after this
        return True

    async def close(self) -> None:
        """The client leaves, as a browser's AbortController does."""
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@dataclass
class Entry:
    """One mix entry: its app and the runs it started (two for a supersede)."""

    app_id: str
    http: httpx.AsyncClient  # its slot's
    create_s: float = 0.0  # POST /apps
    runs: list[RunResult] = field(default_factory=list)


@dataclass
class Soak:
    cfg: Config
    client: Callable[[], httpx.AsyncClient]  # a slot's own client (see slot_client)
    workspaces: Path
    rng: random.Random
    deadline: float = 0.0
    started: int = 0
    results: list[RunResult] = field(default_factory=list)
    create_s: list[float] = field(default_factory=list)  # each entry's POST /apps

    def more(self) -> bool:
        return time.monotonic() < self.deadline and self.started < self.cfg.max_runs

    def new_run(self, entry: Entry, kind: str, expect: str, detail: str | None = None) -> RunResult:
        self.started += 1
        result = RunResult(f"soak-{uuid.uuid4().hex[:16]}", entry.app_id, kind, expect, detail)
        result.snap_before = snapshot(self.workspaces / entry.app_id)
        entry.runs.append(result)
        self.results.append(result)
        return result

    def start(self, entry: Entry, result: RunResult, prompt: str) -> Stream:
        params = {"appId": result.app_id, "message": prompt, "runId": result.run_id}
        return Stream(entry.http, result, params, self.workspaces / result.app_id)

    def window(self) -> float:
        return self.rng.uniform(*STOP_WINDOW_S)

    def text(self, tokens: int) -> str:
        return f"write an essay [sim:long_text pace={self.cfg.pace_ms:g} tokens={tokens}]"

    def tools(self, files: int) -> str:
        return f"write files [sim:tools_midstream files={files} pace={self.cfg.pace_ms:g}]"


async def after_first_event(stream: Stream, delay: float) -> None:
    await stream.first_event.wait()
    await asyncio.sleep(delay)


async def run_complete(soak: Soak, entry: Entry) -> None:
    result = soak.new_run(entry, "complete", "done")
    await soak.start(entry, result, soak.text(soak.rng.randint(10, 40))).task


async def run_tools(soak: Soak, entry: Entry) -> None:
    result = soak.new_run(entry, "tools", "done")
    await soak.start(entry, result, soak.tools(soak.rng.randint(1, 3))).task


async def run_stop(soak: Soak, entry: Entry, *, tools: bool = False) -> None:
    result = soak.new_run(entry, "stop_tools" if tools else "stop", "interrupted", "user_stop")
    stream = soak.start(entry, result, soak.tools(50) if tools else soak.text(LONG_TOKENS))
    await after_first_event(stream, soak.window())
    result.stop_sent_mono, result.stop_sent_wall = time.monotonic(), time.time()
    with contextlib.suppress(httpx.HTTPError):
        response = await request(entry.http, "POST", "/app/chat/stop", json={"runId": result.run_id})
        result.stop_status = response.status_code
    await stream.task


async def run_disconnect(soak: Soak, entry: Entry) -> None:
    result = soak.new_run(entry, "disconnect", "interrupted", "client_disconnect")
    result.read_to_end = False
    prompt = soak.tools(50) if soak.rng.random() < 0.5 else soak.text(LONG_TOKENS)
    stream = soak.start(entry, result, prompt)
    await after_first_event(stream, soak.window())
    await stream.close()


async def run_supersede(soak: Soak, entry: Entry) -> None:
    first = soak.new_run(entry, "supersede", "interrupted", "superseded")
    stream = soak.start(entry, first, soak.text(LONG_TOKENS))
    await after_first_event(stream, soak.window())
    second = soak.new_run(entry, "complete", "done")
    await asyncio.gather(stream.task, soak.start(entry, second, soak.text(soak.rng.randint(10, 40))).task)


async def run_fail(soak: Soak, entry: Entry) -> None:
    directive, code = soak.rng.choice(FAULTS)
    result = soak.new_run(entry, "fail", "failed", code)
    await soak.start(entry, result, f"write an essay [sim:{directive}]").task


KINDS: dict[str, Callable[[Soak, Entry], Awaitable[None]]] = {
    "complete": run_complete,
    "tools": run_tools,
    "stop": run_stop,
    "stop_tools": lambda soak, entry: run_stop(soak, entry, tools=True),
    "disconnect": run_disconnect,
    "supersede": run_supersede,
    "fail": run_fail,
}


async def slot(soak: Soak, *, runs: int | None = None) -> None:
    """Mix entries one after another, each on a new app: the simulator takes its directive from an
    app's first user message, and a new workspace makes every write of a run visible."""
    kinds, weights = list(MIX), list(MIX.values())
    done = 0
    async with soak.client() as http:
        while (soak.more() if runs is None else done < runs) and soak.started < soak.cfg.max_runs:
            began = time.monotonic()
            entry = Entry(await create_app(http), http)
            entry.create_s = time.monotonic() - began
            soak.create_s.append(entry.create_s)
            await KINDS[soak.rng.choices(kinds, weights)[0]](soak, entry)
            # The runs' records, and the workspace as they left it.
            for result in entry.runs:
                began = time.monotonic()
                result.server = await wait_recorded(http, result.run_id)
                result.record_wait_s = time.monotonic() - began
            after = snapshot(soak.workspaces / entry.app_id)
            for result in entry.runs:
                result.snap_after = after
            done += 1


RETRIED: Counter[str] = Counter()  # request errors retried, by exception type (in the report)


async def request(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> httpx.Response:
    """One request, sent again once if its kept-alive connection turned out to be closed.

    A busy client can take a connection from its pool after the server's keep-alive timer closed
    it (the FIN not read yet): the request then fails with no answer. As browsers do, send it
    once more on a new connection; each case is counted in the report. Safe for these requests: a
    second stop of the same run is answered, not acted on twice, and an extra app is harmless.
    """
    try:
        return await http.request(method, url, **kwargs)
    except (httpx.ReadError, httpx.RemoteProtocolError, httpx.WriteError) as exc:
        RETRIED[type(exc).__name__] += 1
        return await http.request(method, url, **kwargs)


async def create_app(http: httpx.AsyncClient) -> str:
    # vue_project: the type whose runs have the file tools.
    response = await request(http, "POST", "/apps", json={"name": "soak app", "codeGenType": "vue_project"})
    response.raise_for_status()
    return str(response.json()["id"])


# --------------------------------------------------------------------------- verification


async def wait_recorded(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """The run's view once it is final and no longer live (or as it is at RECORD_TIMEOUT_S).

    Polled at 50 ms doubling to 1 s: measured, a fixed 50 ms made 1000 slots send the server more
    GET /runs/{id} than anything else, and cost the client half its CPU (py-spy)."""
    view: dict[str, Any] = {}
    delay = RECORD_POLL_FIRST_S
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RECORD_TIMEOUT_S):
            while view.get("status") not in FINAL_STATUSES or view.get("live"):
                if view:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, RECORD_POLL_CAP_S)
                view = (await request(http, "GET", f"/runs/{run_id}")).json()
    return view


def changed(before: Snapshot | None, after: Snapshot | None) -> list[str]:
    before, after = before or {}, after or {}
    return sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))


def run_failures(r: RunResult) -> list[str]:
    """The checks this run breaks (names of ``zero_counts``)."""
    out: list[str] = []
    status = r.server.get("status")
    if (r.error and r.read_to_end) or r.status_code != 200:
        out.append("client_errors")
    if status not in FINAL_STATUSES or r.server.get("live") is not False:
        out.append("not_final")
    if r.read_to_end and r.terminal_events != 1:
        out.append("terminal_events_not_one")
    if r.events_after_terminal:
        out.append("events_after_terminal")
    if r.stream_left_open:
        out.append("streams_left_open")
    if not outcome_as_expected(r):
        out.append("wrong_outcome")
    # A write the stop cut short may still be removing its temp file when `interrupted` is sent
    # (the stream ends at once; the tool's thread finishes after it, docs/design.md "Tools"):
    # only the user's files count here, and temp_files_left checks that none stays.
    visible = [n for n in changed(r.snap_terminal, r.snap_after) if not TEMP_FILE.fullmatch(n)]
    if status == "interrupted" and r.read_to_end and visible:
        out.append("workspace_changed_after_stop")
    written = [n for n in changed(r.snap_before, r.snap_after) if n != WORKSPACE_ROOT and not TEMP_FILE.fullmatch(n)]
    if r.kind in ("tools", "stop_tools", "disconnect") and r.server.get("toolCallsExecuted", 0) != len(written):
        out.append("tool_calls_vs_files_written")
    return out


def outcome_as_expected(r: RunResult) -> bool:
    status = {"done": "completed"}.get(r.expect, r.expect)
    reason = r.server.get("stopReason") if status == "interrupted" else error_code(r)
    if r.server.get("status") != status or (r.expect_detail and reason != r.expect_detail):
        return False
    # 202: stopping; 200 only if the stop was sent twice (see request()) and the first one won.
    if r.kind.startswith("stop") and r.stop_status not in (200, 202):
        return False
    return not r.read_to_end or (r.terminal == r.expect and r.detail == r.expect_detail)


def upstream_after_stop(results: list[RunResult], records: list[dict[str, Any]]) -> list[str]:
    """Runs with an upstream request the server began sending after it accepted their stop.

    Both times are the server's own wall clock: ``stopRequestedAt`` is stamped when the run's gate
    closes, ``sent_at`` by the server's HTTP client just before the request goes out (the
    X-Runforge-Sent-At header, recorded by the simulator). A request without it counts as late.
    """
    bad = []
    for r, accepted, requests in _stopped_runs(results, records):
        if any(u.get("sent_at") is None or u["sent_at"] > accepted for u in requests):
            bad.append(r.run_id)
    return bad


def arrivals_after_stop(results: list[RunResult], records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Requests the simulator *received* after the stop was accepted, though sent before it.

    Not a broken promise (the request was on its way; the stop then closes it), and the reason the
    old check, which compared the simulator's arrival time mapped through the client's clocks,
    failed now and then: the simulator's event loop lags behind under load. Reported with the
    gaps, as the evidence that the send-time check above is the right one.
    """
    late = []
    for r, accepted, requests in _stopped_runs(results, records):
        offset = r.stop_sent_wall - r.stop_sent_mono if r.stop_sent_wall and r.stop_sent_mono else None
        for u in requests:
            arrived = u["started_at"] + offset if offset is not None else None
            if arrived is not None and arrived > accepted and (u.get("sent_at") or 0) <= accepted:
                late.append(
                    {
                        "run": r.run_id,
                        "kind": r.kind,
                        "sent_before_stop_ms": round((accepted - u["sent_at"]) * 1000, 1),
                        "arrived_after_stop_ms": round((arrived - accepted) * 1000, 1),
                    }
                )
    return late


def _stopped_runs(
    results: list[RunResult], records: list[dict[str, Any]]
) -> Iterator[tuple[RunResult, float, list[dict[str, Any]]]]:
    """(run, when the server accepted its stop, its upstream requests) for every stopped run."""
    by_run: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        by_run.setdefault(record["run_id"], []).append(record)
    for r in results:
        accepted = r.server.get("stopRequestedAt")
        if accepted:
            yield r, datetime.fromisoformat(accepted).timestamp(), by_run.get(r.run_id, [])


def database_checks(db_path: Path, results: list[RunResult]) -> dict[str, list[str]]:
    """Read the server's SQLite file directly: what is really persisted, not what the API says."""
    ours = {r.run_id: r for r in results}
    with contextlib.closing(sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=30)) as db:
        statuses = dict(db.execute("SELECT id, status FROM runs WHERE kind = 'code'").fetchall())
        rows = db.execute("SELECT run_id, role, content FROM chat_messages ORDER BY id").fetchall()
    history: dict[str, dict[str, str]] = {}
    for run_id, role, content in rows:
        history.setdefault(run_id, {})[role] = content
    not_final = [run_id for run_id, status in statuses.items() if status not in FINAL_STATUSES]
    missing = [run_id for run_id in ours if run_id not in statuses]
    from_ended = [run_id for run_id in history if statuses.get(run_id) in ("interrupted", "failed")]
    answer_differs = [
        r.run_id
        for r in results
        if statuses.get(r.run_id) == "completed" and r.kind == "complete"
        and history.get(r.run_id, {}).get("ai") != "".join(r.text)
    ]  # fmt: skip
    return {
        "db_runs_not_final": not_final + missing,
        "db_history_from_interrupted_or_failed": from_ended,
        "db_saved_answer_differs_from_stream": answer_differs,
    }


def temp_files(workspaces: Path) -> list[str]:
    if not workspaces.exists():
        return []
    return [str(p.relative_to(workspaces)) for p in workspaces.rglob("*") if TEMP_FILE.fullmatch(p.name)]


# --------------------------------------------------------------------------- the server's state


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


async def server_state(http: httpx.AsyncClient, sim: httpx.AsyncClient) -> dict[str, float]:
    health = (await http.get("/healthz")).json()
    metrics = (await http.get("/metrics")).text
    return {
        "active_runs": health["activeRuns"],
        "run_tasks": health["runTasks"],
        "retained_runs": health["retainedRuns"],
        "loop_tasks": metric(metrics, "runforge_event_loop_tasks"),
        "upstream_open": (await sim.get("/_sim/health")).json()["open"],
    }


async def settle(http: httpx.AsyncClient, sim: httpx.AsyncClient, tasks: float = float("inf")) -> dict[str, float]:
    """The server's state once it has no run, no upstream request and at most ``tasks`` loop tasks
    (or as it is when SETTLE_TIMEOUT_S ran out)."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    state = await server_state(http, sim)
    while time.monotonic() < deadline and (
        state["active_runs"]
        or state["run_tasks"]
        or state["retained_runs"]
        or state["upstream_open"]
        or state["loop_tasks"] > tasks
    ):
        await asyncio.sleep(0.1)
        state = await server_state(http, sim)
    return state


@dataclass
class Health:
    rtt: list[float] = field(default_factory=list)
    errors: Counter[str] = field(default_factory=Counter)  # by exception type, or HTTP status


async def probe_health(http: httpx.AsyncClient, health: Health) -> None:
    while True:
        start = time.monotonic()
        try:
            (await http.get("/healthz")).raise_for_status()
            health.rtt.append(time.monotonic() - start)
        except httpx.HTTPStatusError as exc:
            health.errors[f"HTTP {exc.response.status_code}"] += 1
        except httpx.HTTPError as exc:
            health.errors[type(exc).__name__] += 1
        await asyncio.sleep(HEALTH_PROBE_S)


# --------------------------------------------------------------------------- the soak


@dataclass(frozen=True)
class Target:
    url: str
    token: str
    sim_url: str
    data_dir: Path
    server_pid: int


@dataclass
class Observed:
    """What the soak saw, besides the runs themselves."""

    idle: dict[str, float] = field(default_factory=dict)  # the server before any run
    warm: dict[str, float] = field(default_factory=dict)  # after the warm-up round
    final: dict[str, float] = field(default_factory=dict)  # after the soak
    rss: dict[str, int] = field(default_factory=dict)  # idle, baseline, peak, after
    health: Health = field(default_factory=Health)
    records: list[dict[str, Any]] = field(default_factory=list)  # the simulator's upstream requests
    load_seconds: float = 0.0


# A slot has at most two streams (a supersede) and a stop or record poll in flight at once.
SLOT_CONNECTIONS = 4


def slot_client(target: Target) -> Callable[[], httpx.AsyncClient]:
    """Each slot gets a client of its own, closed when the slot ends (so the server's idle state is
    measured with none of its connections left open). Measured: one pool of 2000 connections for
    1000 slots made httpcore scan the whole pool on every request, and the client, not the
    server, used a core of its own at 1000 slots (py-spy: AsyncConnectionPool.has_expired)."""
    limits = httpx.Limits(
        max_connections=SLOT_CONNECTIONS, max_keepalive_connections=SLOT_CONNECTIONS,
        keepalive_expiry=KEEPALIVE_EXPIRY_S,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {target.token}"}
    # One TLS context for all (unused on loopback http://): httpx builds one per client otherwise,
    # 20 ms each (measured), and 1000 slots starting at once stalled this client for 20 s.
    tls = ssl.create_default_context()
    return lambda: httpx.AsyncClient(
        base_url=target.url, headers=headers, timeout=60.0, limits=limits, trust_env=False, verify=tls
    )


async def soak_run(cfg: Config, target: Target) -> dict[str, Any]:
    seen = Observed()
    # The prober's own connection: a slow /healthz means the server is behind, not a client pool.
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_S)
    control = httpx.AsyncClient(base_url=target.url, timeout=60.0, limits=limits, trust_env=False)
    sim = httpx.AsyncClient(base_url=target.sim_url, timeout=60.0, limits=limits, trust_env=False)
    async with control, sim:
        await wait_until_up(control)
        seen.idle, seen.rss["idle"] = await server_state(control, sim), rss_bytes(target.server_pid)
        soak = Soak(
            cfg, slot_client(target), target.data_dir / "workspaces", random.Random(cfg.seed), deadline=float("inf")
        )
        # Warm-up: the same mix, so the baseline is the process after it has served this load once.
        per_slot = -(-cfg.warmup_runs // cfg.concurrency)
        slots = min(cfg.concurrency, cfg.warmup_runs)
        await asyncio.gather(*(slot(soak, runs=per_slot) for _ in range(slots)))
        seen.warm, seen.rss["baseline"] = await settle(control, sim), rss_bytes(target.server_pid)
        soak.results.clear()
        soak.create_s.clear()
        soak.started = 0
        await load(soak, target, seen, control)
        seen.final = await settle(control, sim, seen.warm["loop_tasks"])
        seen.records = (await sim.get("/_sim/requests")).json()
        seen.rss["after"] = rss_bytes(target.server_pid)
    return report(cfg, soak.results, target, seen, soak.create_s)


async def load(soak: Soak, target: Target, seen: Observed, probe_http: httpx.AsyncClient) -> None:
    """Every slot busy until the deadline; /healthz probed and the server's RSS sampled meanwhile."""
    prober = asyncio.create_task(probe_health(probe_http, seen.health))
    began = time.monotonic()
    soak.deadline = began + soak.cfg.duration
    seen.rss["peak"] = 0
    slots = [asyncio.create_task(slot(soak)) for _ in range(soak.cfg.concurrency)]
    try:
        pending: set[asyncio.Task[None]] = set(slots)
        while pending:
            seen.rss["peak"] = max(seen.rss["peak"], rss_bytes(target.server_pid))
            _, pending = await asyncio.wait(pending, timeout=1.0)
        for task in slots:
            task.result()  # a bug in the soak itself: raise it
    finally:
        for task in (prober, *slots):
            task.cancel()
        await asyncio.gather(prober, *slots, return_exceptions=True)
    seen.load_seconds = time.monotonic() - began


PER_RUN_CHECKS = (
    "client_errors",
    "not_final",
    "terminal_events_not_one",
    "events_after_terminal",
    "streams_left_open",
    "wrong_outcome",
    "workspace_changed_after_stop",
    "tool_calls_vs_files_written",
)


def all_checks(cfg: Config, results: list[RunResult], target: Target, seen: Observed) -> dict[str, list[str]]:
    """Each check -> what broke it (run ids, or the offending figure); every list must be empty."""
    checks: dict[str, list[str]] = {name: [] for name in PER_RUN_CHECKS}
    for r in results:
        for name in run_failures(r):
            checks[name].append(r.run_id)
    checks["upstream_started_after_stop"] = upstream_after_stop(results, seen.records)
    checks |= database_checks(target.data_dir / "runforge.db", results)
    checks["temp_files_left"] = temp_files(target.data_dir / "workspaces")
    # Against the state after the warm-up: the first SSE response starts sse-starlette's one
    # process-wide shutdown watcher, which is not a leak.
    final, warm = seen.final, seen.warm
    checks["server_not_idle"] = [f"{k}={final[k]:g}" for k in IDLE_COUNTS if final[k]]
    if final["loop_tasks"] > warm["loop_tasks"]:
        checks["server_not_idle"].append(f"loop_tasks={final['loop_tasks']:g} > {warm['loop_tasks']:g}")
    limit = seen.rss["baseline"] * (1 + cfg.rss_tolerance)
    checks["rss_above_baseline"] = [f"{seen.rss['after']} B > {limit:.0f} B"] if seen.rss["after"] > limit else []
    return checks


def error_code(r: RunResult) -> str | None:
    error = r.server.get("error")
    return error.get("code") if isinstance(error, dict) else None


def outcome_label(r: RunResult) -> str:
    detail = r.server.get("stopReason") or error_code(r) or "-"
    return f"{r.server.get('status')}/{detail}"


def report(
    cfg: Config, results: list[RunResult], target: Target, seen: Observed, create_s: Sequence[float] = ()
) -> dict[str, Any]:
    checks = all_checks(cfg, results, target, seen)
    failing = {run_id for ids in checks.values() for run_id in ids}
    return {
        "config": asdict(cfg),
        "machine": machine_info(),
        "runs": len(results),
        "load_seconds": round(seen.load_seconds, 1),
        "runs_per_second": round(len(results) / seen.load_seconds, 1) if seen.load_seconds else None,
        "by_kind": dict(Counter(r.kind for r in results)),
        "by_outcome": dict(Counter(outcome_label(r) for r in results)),
        "stops_accepted": sum(1 for r in results if r.stop_status == 202),
        "upstream_requests": len(seen.records),
        # Not a check: sent before the stop, received after it (see arrivals_after_stop).
        "arrived_after_stop": arrivals_after_stop(results, seen.records),
        "tool_calls_executed": sum(r.server.get("toolCallsExecuted", 0) for r in results),
        "text_events_received": sum(len(r.text) for r in results),
        "healthz_rtt_ms": percentiles(seen.health.rtt),
        "phase_ms": {
            "create_app": percentiles(create_s),
            "first_event": percentiles([r.first_event_s for r in results if r.first_event_s is not None]),
            "record_wait": percentiles([r.record_wait_s for r in results if r.record_wait_s is not None]),
        },
        "healthz_errors": dict(seen.health.errors),
        "client_requests_retried": dict(RETRIED),
        "server_idle": seen.idle,
        "server_after_warmup": seen.warm,
        "server_final": seen.final,
        "rss_mib": {name: round(value / 2**20, 1) for name, value in seen.rss.items()},
        "zero_counts": {name: len(ids) for name, ids in checks.items()},
        "examples": {name: ids[:5] for name, ids in checks.items() if ids},
        # The first few runs that broke a check, whole (text as its length), to debug from the file.
        "failing_runs": [asdict(r) | {"text": len(r.text)} for r in results if r.run_id in failing][:20],
    }


def render(rep: dict[str, Any]) -> str:
    cfg, rss = rep["config"], rep["rss_mib"]
    lines = [
        f"soak: {rep['runs']} runs in {rep['load_seconds']} s ({rep['runs_per_second']}/s), "
        f"{cfg['concurrency']} at once, pace {cfg['pace_ms']:g} ms/token",
        f"  by kind:    {rep['by_kind']}",
        f"  by outcome: {rep['by_outcome']}",
        f"  stops accepted {rep['stops_accepted']}, upstream requests {rep['upstream_requests']}, "
        f"tool calls {rep['tool_calls_executed']}",
        f"  upstream requests sent before their stop but received after it: {len(rep['arrived_after_stop'])}"
        + (f", e.g. {rep['arrived_after_stop'][:3]}" if rep["arrived_after_stop"] else ""),
        f"  phases (ms): {rep['phase_ms']}",
        f"  /healthz during load: {rep['healthz_rtt_ms']} ms, errors {rep['healthz_errors'] or 0}",
        f"  client requests sent again on a new connection: {rep['client_requests_retried'] or 0}",
        f"  RSS MiB: idle {rss['idle']}, baseline (after warm-up) {rss['baseline']}, peak {rss['peak']}, "
        f"after {rss['after']}",
        f"  server final: {rep['server_final']} (idle: {rep['server_idle']})",
        "  must be zero:",
    ]
    for name, count in rep["zero_counts"].items():
        mark = "ok " if count == 0 else "FAIL"
        lines.append(f"    {mark} {name}: {count}" + (f"  e.g. {rep['examples'][name]}" if count else ""))
    return "\n".join(lines)


def save(rep: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"soak-{stamp}-c{rep['config']['concurrency']}.json"
    path.write_text(json.dumps(rep, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- main


async def stoppable(work: Awaitable[dict[str, Any]]) -> dict[str, Any]:
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


@dataclass(frozen=True)
class _PaceOnly:
    """What start_simulator reads of stop_latency's Config."""

    pace_ms: float


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(SIGTERM_EXIT))
    work = Path(tempfile.mkdtemp(prefix="runforge-soak-"))
    children: list[Child] = []
    try:
        _, sim_url = start_simulator(_PaceOnly(cfg.pace_ms), work, children)  # type: ignore[arg-type]
        server, token = start_server(sim_url, work, children, {"RUNFORGE_FINISHED_RUN_TTL_S": str(FINISHED_RUN_TTL_S)})
        target = Target(server.url, token, sim_url, work / "data", server.pid)
        gc.freeze()  # the client's own set-up is never garbage
        with asyncio.Runner(loop_factory=loop_factory(cfg.asyncio_loop)) as runner:
            rep = runner.run(stoppable(asyncio.wait_for(soak_run(cfg, target), cfg.timeout)))
    except TimeoutError:
        print(f"soak: did not finish within --timeout {cfg.timeout:g} s", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("soak: terminated", file=sys.stderr)
        return SIGTERM_EXIT
    finally:
        for child in reversed(children):
            stop_child(child)
        if cfg.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(render(rep))
    print(json.dumps({k: rep[k] for k in ("runs", "by_outcome", "zero_counts", "rss_mib")}, separators=(",", ":")))
    print(f"saved {save(rep).relative_to(REPO)}")
    return 1 if any(rep["zero_counts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
