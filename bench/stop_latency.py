#!/usr/bin/env python3
"""Stop-latency benchmark: N concurrent runs over real sockets, each stopped at a random point.

Three processes: the LLM simulator (standalone), the Runforge server, and this client. For
every run we measure, from the instant the client sends ``POST /app/chat/stop``:

(a) until the client receives the ``interrupted`` event (both instants taken here);
(b) until the simulator sees the upstream connection close (its ``disconnected_at``; both are
    CLOCK_MONOTONIC, which Linux shares across processes).

and count things that must never happen: events after the terminal event, workspace changes
after the stop, upstream requests started after the stop, history rows of interrupted runs,
and registry entries or tasks left behind.

    .venv/bin/python bench/stop_latency.py --runs 200 --pace-ms 15

Loopback only; bounded by --timeout; the subprocesses are killed on any exit.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import itertools
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from httpx_sse import aconnect_sse

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
TARGET_P99_MS = 20.0
TERMINAL = frozenset({"done", "interrupted", "failed"})  # SSE event names
FINAL_STATUSES = frozenset({"completed", "interrupted", "failed"})  # a recorded run's status
# Written by the atomic writer before its rename; the name pattern of app/workspace/fs.py.
TEMP_FILE = re.compile(r"\..*\.[0-9a-f]{16}\.tmp", re.DOTALL)
STARTUP_TIMEOUT_S = 20.0
# After its terminal event the server must close the stream; longer than this is a leak.
CLOSE_AFTER_TERMINAL_S = 5.0
# How long a run may take to record its outcome once the client has its terminal event.
RECORD_TIMEOUT_S = 10.0
LAG_PROBE_S = 0.005
HEALTH_PROBE_S = 0.1
CPU_PROBE_S = 0.1
ALREADY_CLOSED_S = 0.002
# CPU used by processes other than ours above which the run is flagged as not on an idle machine.
OTHERS_WARN_CORES = 0.1
SIGTERM_EXIT = 143

# name -> (size, mtime_ns) of every entry in a workspace.
Snapshot = dict[str, tuple[int, int]]
WORKSPACE_ROOT = "."


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    runs: int
    pace_ms: float
    seed: int
    min_delay: float
    max_delay: float
    tools_share: float
    tools_files: int
    timeout: float
    keep: bool
    asyncio_loop: bool

    @property
    def text_tokens(self) -> int:
        # Long enough that no long_text run can finish before its stop, even when slowed down.
        return max(4000, math.ceil(5 * self.max_delay * 1000 / self.pace_ms))


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=200, help="concurrent runs (default 200)")
    p.add_argument("--pace-ms", type=float, default=15.0, help="simulated ms per token (default 15)")
    p.add_argument("--seed", type=int, default=1, help="seed for scenario mix and stop delays")
    p.add_argument("--min-delay", type=float, default=0.2, help="earliest stop, s after the first event")
    p.add_argument("--max-delay", type=float, default=2.0, help="latest stop, s after the first event")
    p.add_argument("--tools-share", type=float, default=0.25, help="share of tools_midstream runs")
    p.add_argument("--tools-files", type=int, default=6, help="files written by a tools_midstream run")
    p.add_argument("--timeout", type=float, default=120.0, help="global time limit, s")
    p.add_argument("--keep", action="store_true", help="keep the temp data dir and process logs")
    p.add_argument("--asyncio-loop", action="store_true", help="run this client on asyncio's loop, not uvloop")
    a = p.parse_args(argv)
    if a.runs < 1 or a.pace_ms <= 0 or not 0 <= a.min_delay <= a.max_delay or not 0 <= a.tools_share <= 1:
        p.error("need --runs >= 1, --pace-ms > 0, 0 <= --min-delay <= --max-delay, 0 <= --tools-share <= 1")
    return Config(
        a.runs, a.pace_ms, a.seed, a.min_delay, a.max_delay, a.tools_share, a.tools_files, a.timeout, a.keep,
        a.asyncio_loop,
    )  # fmt: skip


# --------------------------------------------------------------------------- subprocesses


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


def launch(name: str, argv: list[str], env: dict[str, str], log: Path, children: list[Child]) -> Child:
    # Output goes to a file, not a pipe: nobody has to drain it while the benchmark runs.
    # A new session keeps a terminal's Ctrl-C from reaching the children before our cleanup.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    child = Child(name, proc, log)
    children.append(child)  # at once: a signal during start-up must still find it to stop it
    return child


def wait_for_output(child: Child, pattern: str) -> re.Match[str]:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(pattern, child.log.read_text(errors="replace"))
        if match:
            return match
        if child.proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = child.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{child.name} did not start (exit code {child.proc.poll()}):\n{tail}")


def stop_child(child: Child) -> None:
    if child.proc.poll() is not None:
        return
    child.proc.terminate()
    try:
        child.proc.wait(10)
    except subprocess.TimeoutExpired:
        child.proc.kill()
        child.proc.wait(5)


def clean_env() -> dict[str, str]:
    # Nothing from the caller's environment may point the server at a real provider.
    return {k: v for k, v in os.environ.items() if not k.startswith(("RUNFORGE_", "OPENAI_"))}


def start_simulator(cfg: Config, work: Path, children: list[Child]) -> tuple[Child, str]:
    argv = [sys.executable, "-m", "app.llm.simulator", "--host", "127.0.0.1", "--port", "0"]
    argv += ["--pace-ms", str(cfg.pace_ms)]
    child = launch("simulator", argv, clean_env(), work / "simulator.log", children)
    match = wait_for_output(child, r"listening on (http://127\.0\.0\.1:\d+)/v1")
    return child, match[1]


def start_server(sim_url: str, work: Path, children: list[Child]) -> tuple[Child, str, str]:
    env = clean_env() | {
        "RUNFORGE_DATA_DIR": str(work / "data"),
        "RUNFORGE_HOST": "127.0.0.1",
        "RUNFORGE_LLM_BASE_URL": f"{sim_url}/v1",
        "RUNFORGE_LLM_API_KEY": "sim",
        "RUNFORGE_LLM_MODEL": "runforge-sim",
        "RUNFORGE_LLM_MAX_RETRIES": "0",
    }
    argv = [sys.executable, "-m", "app", "serve", "--port", "0", "--no-access-log"]
    child = launch("server", argv, env, work / "server.log", children)
    match = wait_for_output(child, r"Login URL: (http://127\.0\.0\.1:\d+)/\?token=(\S+)")
    # The banner is printed before uvicorn accepts connections; the client retries /healthz.
    return child, match[1], match[2]


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs), from the first line of /proc/stat."""
    jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_sample(pids: dict[str, int]) -> dict[str, float]:
    sample = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sample["machine"] = machine_busy_seconds()
    return sample


# --------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class RunSpec:
    index: int
    run_id: str
    app_id: str
    scenario: str
    delay: float

    def prompt(self, cfg: Config) -> str:
        if self.scenario == "tools_midstream":
            return f"write files [sim:tools_midstream files={cfg.tools_files} pace={cfg.pace_ms:g}]"
        return f"write an essay [sim:long_text pace={cfg.pace_ms:g} tokens={cfg.text_tokens}]"


@dataclass
class RunResult:
    run_id: str
    app_id: str
    scenario: str
    delay: float
    status_code: int | None = None
    error: str | None = None
    first_event_at: float | None = None
    first_text_at: float | None = None  # first streamed token: the upstream was really flowing
    events: Counter[str] = field(default_factory=Counter)
    terminal: str | None = None
    terminal_reason: str | None = None
    terminal_at: float | None = None  # (t1) when the terminal event reached this client
    events_after_terminal: int = 0
    stream_left_open: bool = False
    stop_sent_at: float | None = None  # (t0) monotonic, just before the POST
    stop_sent_wall: float | None = None  # time.time() at t0, to place the server's wall-clock instants
    stop_answered_at: float | None = None
    # httpx trace events of the stop request -> monotonic instant (e.g. when its body was written).
    stop_trace: dict[str, float] = field(default_factory=dict)
    stop_status: int | None = None
    stop_answer: str | None = None
    snapshot_at_terminal: Snapshot | None = None
    # Filled in by the verification phase.
    server: dict[str, Any] | None = None
    stop_accepted_at: float | None = None  # server's stopRequestedAt, on our monotonic clock
    snapshot_after: Snapshot | None = None
    history_rows: int | None = None
    upstream: list[dict[str, Any]] = field(default_factory=list)

    @property
    def stopped(self) -> bool:
        """The stop was accepted while the run was live (202): it counts for the latencies."""
        return self.stop_status == 202

    @property
    def interrupt_latency(self) -> float | None:
        if not self.stopped or self.terminal != "interrupted" or self.terminal_at is None:
            return None
        assert self.stop_sent_at is not None
        return self.terminal_at - self.stop_sent_at


def plan_runs(cfg: Config, app_ids: list[str]) -> list[RunSpec]:
    rng = random.Random(cfg.seed)
    tools = round(cfg.runs * cfg.tools_share)
    scenarios = ["tools_midstream"] * tools + ["long_text"] * (cfg.runs - tools)
    rng.shuffle(scenarios)
    return [
        RunSpec(i, f"bench-{i:04d}", app_id, scenario, rng.uniform(cfg.min_delay, cfg.max_delay))
        for i, (app_id, scenario) in enumerate(zip(app_ids, scenarios, strict=True))
    ]


def snapshot(workspace: Path) -> Snapshot:
    """Top-level entries of a workspace; ``WORKSPACE_ROOT`` records that the directory exists."""
    try:
        entries = list(os.scandir(workspace))
    except FileNotFoundError:
        return {}  # the workspace is created by the first write
    # Creating the directory is a side effect too: an empty workspace must differ from none.
    result: Snapshot = {WORKSPACE_ROOT: (0, 0)}
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):  # a temp file removed while we look
            st = entry.stat(follow_symlinks=False)
            result[entry.name] = (st.st_size, st.st_mtime_ns)
    return result


@dataclass(frozen=True)
class Clients:
    """Makes the server's HTTP clients.

    Every run gets two clients of its own, one connection each (its stream, its stop): measured,
    one shared pool of 200 connections made httpcore scan the whole pool on every request and
    every stream close, and that bookkeeping was most of this client's CPU and of (a).
    """

    base_url: str
    headers: dict[str, str]
    timeout: httpx.Timeout
    # One SSL context for all: loopback is plain HTTP, but each client would load the CA bundle.
    ssl: ssl.SSLContext = field(default_factory=ssl.create_default_context)

    def make(self, connections: int = 1) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, limits=limits, verify=self.ssl,
            trust_env=False,
        )  # fmt: skip


async def drive_run(cfg: Config, clients: Clients, spec: RunSpec, workspace: Path) -> RunResult:
    async with clients.make() as streams, clients.make() as stopper:
        return await follow_run(cfg, streams, stopper, spec, workspace)


async def follow_run(
    cfg: Config, streams: httpx.AsyncClient, stopper: httpx.AsyncClient, spec: RunSpec, workspace: Path
) -> RunResult:
    result = RunResult(spec.run_id, spec.app_id, spec.scenario, spec.delay)
    params = {"appId": spec.app_id, "message": spec.prompt(cfg), "runId": spec.run_id}
    stop_task: asyncio.Task[None] | None = None
    try:
        async with aconnect_sse(streams, "GET", "/app/chat/gen/code", params=params) as source:
            result.status_code = source.response.status_code
            if result.status_code != 200:
                result.error = f"HTTP {result.status_code}: {(await source.response.aread())[:200]!r}"
                return result
            async with asyncio.timeout(None) as deadline:
                async for sse in source.aiter_sse():
                    now = time.monotonic()
                    if stop_task is None:
                        result.first_event_at = now
                        stop_task = asyncio.create_task(stop_later(stopper, spec, result, now + spec.delay))
                    if on_event(result, sse.event, sse.data, now, workspace):
                        # Keep reading: anything but the server closing the stream is a failure.
                        deadline.reschedule(asyncio.get_running_loop().time() + CLOSE_AFTER_TERMINAL_S)
    except TimeoutError:
        result.stream_left_open = True
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    except asyncio.CancelledError:  # the global timeout: do not wait for a pending stop
        if stop_task is not None:
            stop_task.cancel()
        raise
    finally:
        if stop_task is not None:
            await stop_task
    return result


def on_event(result: RunResult, kind: str, data: str, now: float, workspace: Path) -> bool:
    """Count one event; returns True when it is the terminal one."""
    if result.terminal is not None:
        result.events_after_terminal += 1
        return False
    result.events[kind] += 1
    if kind not in TERMINAL:
        if result.first_text_at is None and kind == "message":
            result.first_text_at = now
        return False
    result.terminal, result.terminal_at = kind, now
    result.terminal_reason = json.loads(data).get("reason")
    # The workspace as it is when the client learns the run is over: nothing may change after.
    result.snapshot_at_terminal = snapshot(workspace)
    return True


async def stop_later(stopper: httpx.AsyncClient, spec: RunSpec, result: RunResult, at: float) -> None:
    # Open the stop's connection now, as a page that has talked to its server has one: (a) is
    # about the stop, not about a TCP handshake in the middle of a burst. It outlives the
    # delay (uvicorn keeps idle connections 5 s); if not, the trace shows a new connect.
    with contextlib.suppress(httpx.HTTPError):
        await stopper.get("/healthz")
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    result.stop_sent_at, result.stop_sent_wall = time.monotonic(), time.time()

    async def trace(event: str, _: dict[str, Any]) -> None:
        # Splits (a) into "this client got the request onto the socket" and "the server took it".
        result.stop_trace[event] = time.monotonic()

    try:
        response = await stopper.post("/app/chat/stop", json={"runId": spec.run_id}, extensions={"trace": trace})
    except httpx.HTTPError as exc:
        result.error = f"stop failed: {type(exc).__name__}: {exc}"
        return
    result.stop_answered_at = time.monotonic()
    result.stop_status = response.status_code
    with contextlib.suppress(ValueError):
        result.stop_answer = response.json().get("status")


# --------------------------------------------------------------------------- load probes


@dataclass
class Probes:
    """What the machine looks like while the runs are live: is anyone starved for CPU?"""

    # (monotonic instant, seconds): kept as time series to line stalls up with the stops.
    loop_lag: list[tuple[float, float]] = field(default_factory=list)  # this client's event loop
    health_rtt: list[tuple[float, float]] = field(default_factory=list)  # GET /healthz round trips
    sim_rtt: list[tuple[float, float]] = field(default_factory=list)  # GET /_sim/health round trips
    health_errors: int = 0
    # (monotonic instant, cumulative CPU seconds per process and for the whole machine)
    cpu: list[tuple[float, dict[str, float]]] = field(default_factory=list)


async def probe_loop_lag(probes: Probes) -> None:
    # A sleep that wakes late means this process (the client) was busy: its timestamps are late too.
    while True:
        start = time.monotonic()
        await asyncio.sleep(LAG_PROBE_S)
        probes.loop_lag.append((start, time.monotonic() - start - LAG_PROBE_S))


async def probe_cpu(pids: dict[str, int], probes: Probes) -> None:
    # Who has the CPUs, 10 times a second: a saturated machine delays every process's timestamps.
    while True:
        probes.cpu.append((time.monotonic(), cpu_sample(pids)))
        await asyncio.sleep(CPU_PROBE_S)


async def probe_health(http: httpx.AsyncClient, path: str, series: list[tuple[float, float]], probes: Probes) -> None:
    # A slow answer on an idle keep-alive connection means that process's event loop is behind.
    while True:
        start = time.monotonic()
        try:
            (await http.get(path)).raise_for_status()
            series.append((start, time.monotonic() - start))
        except httpx.HTTPError:
            probes.health_errors += 1
        await asyncio.sleep(HEALTH_PROBE_S)


# --------------------------------------------------------------------------- verification


async def wait_until_up(http: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            if (await http.get("/healthz")).status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.05)


async def create_apps(http: httpx.AsyncClient, count: int) -> list[str]:
    limit = asyncio.Semaphore(16)  # setup is not measured: do not hammer SQLite with 200 writers

    async def create(i: int) -> str:
        async with limit:
            # vue_project: the type whose runs call the file tools (the tools_midstream share).
            response = await http.post("/apps", json={"name": f"bench app {i}", "codeGenType": "vue_project"})
            response.raise_for_status()
            return str(response.json()["id"])

    return list(await asyncio.gather(*(create(i) for i in range(count))))


async def wait_recorded(http: httpx.AsyncClient, run_id: str) -> dict[str, Any]:
    """GET /runs/{id} until the run has a final status and is no longer live."""
    view: dict[str, Any] = {}
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(RECORD_TIMEOUT_S):
            while True:
                view = (await http.get(f"/runs/{run_id}")).json()
                if view.get("status") in FINAL_STATUSES and not view.get("live"):
                    break
                await asyncio.sleep(0.02)
    return view


async def verify_run(http: httpx.AsyncClient, sim: httpx.AsyncClient, result: RunResult, workspace: Path) -> None:
    result.server = await wait_recorded(http, result.run_id)
    accepted = result.server.get("stopRequestedAt")
    if accepted and result.stop_sent_at is not None and result.stop_sent_wall is not None:
        wall = datetime.fromisoformat(accepted).timestamp()
        result.stop_accepted_at = result.stop_sent_at + (wall - result.stop_sent_wall)
    result.snapshot_after = snapshot(workspace)
    if result.terminal == "interrupted" or result.server.get("status") == "interrupted":
        result.history_rows = len((await http.get(f"/apps/{result.app_id}/messages")).json())
    result.upstream = (await sim.get("/_sim/requests", params={"run_id": result.run_id})).json()


async def verify_all(
    http: httpx.AsyncClient, sim: httpx.AsyncClient, results: list[RunResult], workspaces: Path
) -> None:
    limit = asyncio.Semaphore(32)

    async def one(result: RunResult) -> None:
        async with limit:
            await verify_run(http, sim, result, workspaces / result.app_id)

    await asyncio.gather(*(one(r) for r in results))


async def registry_after(http: httpx.AsyncClient) -> dict[str, Any]:
    """/healthz once every run is recorded; a task's done-callback may lag by a loop turn."""
    first = (await http.get("/healthz")).json()
    latest = first
    deadline = time.monotonic() + 2.0
    while (latest["activeRuns"] or latest["runTasks"]) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        latest = (await http.get("/healthz")).json()
    return {"first": first, "final": latest}


# --------------------------------------------------------------------------- the benchmark


@dataclass
class Outcome:
    results: list[RunResult]
    probes: Probes
    registry: dict[str, Any]
    load_seconds: float
    cpu: dict[str, float]  # CPU use during the load phase, in cores (1.0 = one core busy)


@dataclass(frozen=True)
class Target:
    server_url: str
    token: str
    sim_url: str
    data_dir: Path
    pids: dict[str, int]  # process name -> pid, for CPU accounting


async def benchmark(cfg: Config, target: Target) -> Outcome:
    timeout = httpx.Timeout(30.0, read=cfg.timeout)
    workspaces = target.data_dir / "workspaces"
    clients = Clients(target.server_url, {"Authorization": f"Bearer {target.token}"}, timeout)
    sim_clients = Clients(target.sim_url, {}, timeout, clients.ssl)
    async with (
        clients.make(connections=32) as control,
        clients.make() as health,
        sim_clients.make(connections=32) as sim,
        sim_clients.make() as sim_health,
    ):
        await wait_until_up(control)
        specs = plan_runs(cfg, await create_apps(control, cfg.runs))
        probes = Probes()
        probe_tasks = [
            asyncio.create_task(probe_loop_lag(probes)),
            asyncio.create_task(probe_health(health, "/healthz", probes.health_rtt, probes)),
            asyncio.create_task(probe_health(sim_health, "/_sim/health", probes.sim_rtt, probes)),
            asyncio.create_task(probe_cpu(target.pids, probes)),
        ]
        cpu_before = cpu_sample(target.pids)
        started = time.monotonic()
        # The client's own collector pauses (measured: up to ~90 ms of loop lag) would be
        # counted as stop latency. The load phase is a few seconds: collect later instead.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            runs = (drive_run(cfg, clients, spec, workspaces / spec.app_id) for spec in specs)
            results = list(await asyncio.gather(*runs))
        finally:
            gc.enable()
            gc.unfreeze()
            for task in probe_tasks:
                task.cancel()
            await asyncio.gather(*probe_tasks, return_exceptions=True)
        load_seconds = time.monotonic() - started
        cpu_after = cpu_sample(target.pids)
        cpu = {name: (cpu_after[name] - cpu_before[name]) / load_seconds for name in cpu_after}
        cpu["others"] = cpu["machine"] - sum(v for name, v in cpu.items() if name != "machine")
        await verify_all(control, sim, results, workspaces)
        registry = await registry_after(control)
    return Outcome(results, probes, registry, load_seconds, cpu)


# --------------------------------------------------------------------------- analysis


def percentiles(values: Sequence[float]) -> dict[str, float | int | None]:
    """Nearest-rank percentiles, in milliseconds."""
    if not values:
        return {"n": 0, "p50": None, "p95": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * 1000, 2)

    mean = round(sum(ordered) / len(ordered) * 1000, 2)
    return {"n": len(ordered), "p50": rank(50), "p95": rank(95), "p99": rank(99), "max": rank(100), "mean": mean}


def last_upstream(result: RunResult) -> dict[str, Any] | None:
    return max(result.upstream, key=lambda r: r["seq"]) if result.upstream else None


def upstream_latency(result: RunResult) -> float | None:
    """(b): stop sent -> the simulator saw the run's last upstream request disconnect."""
    record = last_upstream(result)
    if not result.stopped or record is None or record["disconnected_at"] is None:
        return None
    assert result.stop_sent_at is not None
    return float(record["disconnected_at"]) - result.stop_sent_at


def workspace_changes(result: RunResult) -> tuple[list[str], list[str]]:
    """(visible files changed after the terminal event, temp files appearing or vanishing)."""
    before, after = result.snapshot_at_terminal or {}, result.snapshot_after or {}
    changed = sorted(name for name in before.keys() | after.keys() if before.get(name) != after.get(name))
    temp = [name for name in changed if TEMP_FILE.fullmatch(name)]
    return [name for name in changed if name not in temp], temp


def visible_files(snap: Snapshot | None) -> int:
    return sum(1 for name in snap or {} if name != WORKSPACE_ROOT and not TEMP_FILE.fullmatch(name))


def upstream_after_stop(result: RunResult, since: float | None) -> list[dict[str, Any]]:
    if since is None:
        return []
    return [r for r in result.upstream if r["started_at"] > since]


def zero_counts(results: list[RunResult], registry: dict[str, Any]) -> dict[str, list[str]]:
    """Each check -> the run ids (or registry fields) that broke it; every list must be empty."""
    checks: dict[str, list[str]] = {
        name: []
        for name in (
            "run_errors",
            "events_after_terminal",
            "streams_not_closed_after_terminal",
            "stopped_but_not_interrupted",
            "not_recorded_as_final",
            "workspace_changed_after_interrupted",
            "temp_files_left",
            "tools_executed_vs_files_mismatch",
            "upstream_started_after_stop_accepted",
            "upstream_never_closed",
            "history_rows_from_interrupted_runs",
            "leftover_registry",
        )
    }
    for r in results:
        for name in run_failures(r):
            checks[name].append(r.run_id)
    final = registry["final"]
    checks["leftover_registry"] = [f"{k}={final[k]}" for k in ("activeRuns", "runTasks") if final[k]]
    return checks


def run_failures(r: RunResult) -> Iterator[str]:
    server = r.server or {}
    if r.error or r.status_code != 200 or r.terminal == "failed" or r.terminal is None:
        yield "run_errors"
    if r.events_after_terminal:
        yield "events_after_terminal"
    if r.stream_left_open:
        yield "streams_not_closed_after_terminal"
    if r.stopped and (r.terminal != "interrupted" or server.get("status") != "interrupted"):
        yield "stopped_but_not_interrupted"
    if server.get("live") is not False or server.get("status") not in FINAL_STATUSES:
        yield "not_recorded_as_final"
    visible, _ = workspace_changes(r)
    if visible and r.terminal == "interrupted":
        yield "workspace_changed_after_interrupted"
    if any(TEMP_FILE.fullmatch(name) for name in r.snapshot_after or {}):
        yield "temp_files_left"
    if r.scenario == "tools_midstream" and server.get("toolCallsExecuted") != visible_files(r.snapshot_after):
        yield "tools_executed_vs_files_mismatch"
    if upstream_after_stop(r, r.stop_accepted_at):
        yield "upstream_started_after_stop_accepted"
    if any(u["finished_at"] is None and u["disconnected_at"] is None for u in r.upstream):
        yield "upstream_never_closed"
    if r.history_rows:
        yield "history_rows_from_interrupted_runs"


def info_counts(results: list[RunResult]) -> dict[str, Any]:
    """Counts that are not failures but explain the latency population."""
    stopped = [r for r in results if r.stopped]
    starts = [r.first_event_at for r in results if r.first_event_at is not None]
    no_open_upstream = [r for r in stopped if upstream_latency(r) is None]
    return {
        "runs_by_scenario": dict(Counter(r.scenario for r in results)),
        "stopped_live_202": len(stopped),
        "completed_before_stop": sum(1 for r in results if r.terminal == "done"),
        "stop_answers": dict(Counter(f"{r.stop_status}:{r.stop_answer}" for r in results)),
        "interrupted_reasons": dict(Counter(str(r.terminal_reason) for r in results if r.terminal == "interrupted")),
        # Stops that landed while no upstream request was open (a tool executing, between steps).
        "stopped_without_open_upstream": len(no_open_upstream),
        "upstream_finished_normally_after_stop_sent": sum(
            1 for r in stopped if (u := last_upstream(r)) and u["finished_at"] and u["finished_at"] > r.stop_sent_at
        ),
        "upstream_started_after_stop_sent": sum(1 for r in stopped if upstream_after_stop(r, r.stop_sent_at)),
        # Of the requests the simulator saw start after the server's stop: those it found already
        # closed (no chunk sent, disconnect within 2 ms of its start). Most likely written before
        # the stop and read late by a simulator that was behind; the zero-count still counts them.
        "upstream_after_accepted_already_closed": sum(
            1
            for r in stopped
            for u in upstream_after_stop(r, r.stop_accepted_at)
            if u["chunks_sent"] == 0
            and u["disconnected_at"] is not None
            and u["disconnected_at"] - u["started_at"] <= ALREADY_CLOSED_S
        ),
        "temp_file_churn_after_terminal": sum(1 for r in results if workspace_changes(r)[1]),
        "events_received": sum(sum(r.events.values()) for r in results),
        # First to last `run` event: how long the server took to start all runs.
        "runs_started_over_ms": round((max(starts) - min(starts)) * 1000) if starts else None,
        "tool_calls_executed": sum(int((r.server or {}).get("toolCallsExecuted") or 0) for r in results),
    }


def startup(results: list[RunResult]) -> dict[str, dict[str, float | int | None]]:
    """How long a run takes to get going: stops that land before that have no upstream to close."""
    first_request, first_text = [], []
    for r in results:
        if r.first_event_at is None:
            continue
        if r.upstream:
            first_request.append(min(u["started_at"] for u in r.upstream) - r.first_event_at)
        if r.first_text_at is not None:
            first_text.append(r.first_text_at - r.first_event_at)
    return {
        "run_event_to_first_upstream_request": percentiles(first_request),
        "run_event_to_first_token_at_client": percentiles(first_text),
    }


# httpx trace event: the whole stop request is on the socket.
REQUEST_WRITTEN = "http11.send_request_body.complete"
CONNECTED = "connection.connect_tcp.complete"


def decomposition(results: list[RunResult]) -> dict[str, dict[str, float | int | None]]:
    """Where (a) and (b) go, split at the instant the client had written the stop request, and at
    the server's own stop instant (GET /runs/{id} stopRequestedAt, wall clock mapped onto ours)."""
    names = ("sent_to_written", "written_to_accepted", "accepted_to_client", "accepted_to_upstream_closed")
    legs: dict[str, list[float]] = {name: [] for name in (*names, "sent_to_stop_answer", "new_connection_connect")}
    for r in results:
        a, b, accepted, sent = r.interrupt_latency, upstream_latency(r), r.stop_accepted_at, r.stop_sent_at
        if a is None or accepted is None or sent is None:
            continue
        written = r.stop_trace.get(REQUEST_WRITTEN)
        if written is not None:
            legs["sent_to_written"].append(written - sent)
            legs["written_to_accepted"].append(accepted - written)
        if CONNECTED in r.stop_trace:
            legs["new_connection_connect"].append(r.stop_trace[CONNECTED] - sent)
        legs["accepted_to_client"].append(sent + a - accepted)
        if r.stop_answered_at is not None:
            legs["sent_to_stop_answer"].append(r.stop_answered_at - sent)
        if b is not None:
            legs["accepted_to_upstream_closed"].append(sent + b - accepted)
    return {name: percentiles(values) for name, values in legs.items()}


# --------------------------------------------------------------------------- report


def machine_info() -> dict[str, Any]:
    cpu_model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in line
        ),
        platform.processor() or "unknown",
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        # Others edit the tree while benchmarks run: name what differed from the commit.
        "git_changes": _git("status", "--porcelain").splitlines()[:30],
        "loadavg_before": os.getloadavg(),
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build_report(cfg: Config, outcome: Outcome, machine: dict[str, Any]) -> dict[str, Any]:
    a = percentiles([v for r in outcome.results if (v := r.interrupt_latency) is not None])
    b = percentiles([v for r in outcome.results if (v := upstream_latency(r)) is not None])
    zeros = zero_counts(outcome.results, outcome.registry)
    return {
        "benchmark": "stop_latency",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(cfg) | {"text_tokens": cfg.text_tokens},
        "machine": machine,
        "processes": "simulator, server and benchmark client: 3 processes sharing the machine's CPUs",
        "client_loop": "asyncio" if loop_factory(cfg.asyncio_loop) is None else "uvloop",
        "latency_ms": {"a_stop_to_interrupted": a, "b_stop_to_upstream_closed": b},
        "target_p99_ms": TARGET_P99_MS,
        "target": {key: verdict(stats) for key, stats in (("a", a), ("b", b))},
        "decomposition_ms": decomposition(outcome.results),
        "startup_ms": startup(outcome.results),
        "zero_counts": {name: len(ids) for name, ids in zeros.items()},
        "zero_count_offenders": {name: ids[:20] for name, ids in zeros.items() if ids},
        "info": info_counts(outcome.results),
        "load": load_info(outcome),
        "registry_after": outcome.registry,
    }


def verdict(stats: dict[str, float | int | None]) -> str:
    p99 = stats["p99"]
    return "n/a" if p99 is None else "PASS" if p99 <= TARGET_P99_MS else "MISS"


def load_info(outcome: Outcome) -> dict[str, Any]:
    return {
        "load_phase_s": round(outcome.load_seconds, 2),
        "cpu_cores_used": {name: round(v, 2) for name, v in outcome.cpu.items()},
        "cpu_windows": cpu_windows(outcome.probes.cpu),
        "client_loop_lag_ms": percentiles([lag for _, lag in outcome.probes.loop_lag]),
        "healthz_rtt_ms": percentiles([rtt for _, rtt in outcome.probes.health_rtt]),
        "simulator_health_rtt_ms": percentiles([rtt for _, rtt in outcome.probes.sim_rtt]),
        "healthz_errors": outcome.probes.health_errors,
    }


def cpu_windows(samples: list[tuple[float, dict[str, float]]]) -> dict[str, Any]:
    """CPU use per ~100 ms window: how often all CPUs were busy at once, and how often the
    server's single event-loop thread was (a loop at ~1 core queues every callback)."""
    cores = len(os.sched_getaffinity(0))
    windows = [
        {name: (b[name] - a[name]) / (tb - ta) for name in b}
        for (ta, a), (tb, b) in itertools.pairwise(samples)
        if tb > ta
    ]
    if not windows:
        return {}
    return {
        "windows": len(windows),
        "machine_saturated": sum(1 for w in windows if w["machine"] >= 0.9 * cores),
        "server_over_0.9_core": sum(1 for w in windows if w["server"] >= 0.9),
        "max_cores": {name: round(max(w[name] for w in windows), 2) for name in windows[0]},
    }


def per_run(result: RunResult) -> dict[str, Any]:
    row = asdict(result)
    row["events"] = dict(result.events)
    row["a_ms"] = _ms(result.interrupt_latency)
    row["b_ms"] = _ms(upstream_latency(result))
    return row


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


def render(report: dict[str, Any]) -> str:
    cfg, machine, load, info = report["config"], report["machine"], report["load"], report["info"]
    lines = [
        f"Runforge stop latency: {cfg['runs']} concurrent runs {info['runs_by_scenario']}, "
        f"pace {cfg['pace_ms']:g} ms/token, stop {cfg['min_delay']:g}-{cfg['max_delay']:g} s after the first event, "
        f"seed {cfg['seed']}",
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"commit {machine['git_commit'][:12]}"
        + (f" + {len(machine['git_changes'])} uncommitted change(s)" if machine["git_changes"] else ""),
        f"note: {report['processes']} ({machine['nproc']}): the client's own timestamps compete for CPU too "
        f"(client loop: {report['client_loop']})",
        "",
        f"{'latency (ms)':<44}{'n':>5}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  p99<={TARGET_P99_MS:g}",
    ]
    a, b = report["latency_ms"]["a_stop_to_interrupted"], report["latency_ms"]["b_stop_to_upstream_closed"]
    lines.append(_row("(a) stop sent -> interrupted at client", a, report["target"]["a"]))
    lines.append(_row("(b) stop sent -> upstream closed (simulator)", b, report["target"]["b"]))
    lines.append("  split at 'request written' (client) and stopRequestedAt (server):")
    for name, stats in report["decomposition_ms"].items():
        lines.append(_row(f"    {name.replace('_', ' ')}", stats, ""))
    lines.append("  run start-up (stops before the first upstream request have no (b)):")
    for name, stats in report["startup_ms"].items():
        lines.append(_row(f"    {name.replace('_', ' ')}", stats, ""))
    lines += ["", "must be zero:"]
    lines += [
        f"  {name:<42}{count:>6}" + ("   <-- FAIL" if count else "") for name, count in report["zero_counts"].items()
    ]
    lines += ["", "other counts:"]
    lines += [f"  {name:<42}{value!s:>6}" for name, value in info.items() if not isinstance(value, dict)]
    lines += [f"  {name:<42}{value}" for name, value in info.items() if isinstance(value, dict)]
    lines += [
        "",
        f"load phase {load['load_phase_s']} s; CPU cores used (avg): {load['cpu_cores_used']}",
        *_busy_machine_warning(load["cpu_cores_used"]),
        f"~100 ms CPU windows: {load['cpu_windows']}",
        _probe_line("client event-loop lag", load["client_loop_lag_ms"]),
        _probe_line("server GET /healthz RTT", load["healthz_rtt_ms"]),
        _probe_line("simulator GET /_sim/health RTT", load["simulator_health_rtt_ms"]),
        f"probe errors: {load['healthz_errors']}; registry after: {report['registry_after']['final']}",
    ]
    return "\n".join(lines)


def _busy_machine_warning(cores: dict[str, float]) -> list[str]:
    if cores.get("others", 0.0) < OTHERS_WARN_CORES:
        return []
    return [f"WARNING: other processes used {cores['others']} cores during the load: not an idle machine"]


def _probe_line(label: str, stats: dict[str, Any]) -> str:
    return _row(f"{label} (ms)", stats, "")


def _row(label: str, stats: dict[str, Any], verdict_text: str) -> str:
    cells = "".join(f"{'-' if stats[k] is None else stats[k]:>9}" for k in ("p50", "p95", "p99", "max"))
    return f"{label:<44}{stats['n']:>5}{cells}  {verdict_text}"


def save(report: dict[str, Any], outcome: Outcome) -> Path:
    """The report plus every run and the probe time series (all instants are time.monotonic())."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"stop_latency-{stamp}-n{report['config']['runs']}.json"
    probes = {
        "client_loop_lag": outcome.probes.loop_lag,
        "healthz_rtt": outcome.probes.health_rtt,
        "simulator_health_rtt": outcome.probes.sim_rtt,
        "cpu": outcome.probes.cpu,
    }
    details = {"runs": [per_run(r) for r in outcome.results], "probes": probes}
    path.write_text(json.dumps(report | details, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- main


async def stoppable(work: Awaitable[Outcome]) -> Outcome:
    """Await ``work``; SIGTERM cancels it (a handler raising inside a loop callback would not)."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await work
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def loop_factory(asyncio_loop: bool) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop (what uvicorn runs the server on) unless --asyncio-loop: the client shares the
    CPUs with what it measures, so the less it spends per event, the less it distorts."""
    if asyncio_loop:
        return None
    try:
        import uvloop  # optional here; installed with uvicorn[standard]
    except ImportError:
        return None
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, through the finally below that stops the children. This
    # covers the synchronous start-up; inside the loop see stoppable() (uvloop would swallow it).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(SIGTERM_EXIT))
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="runforge-bench-"))
    children: list[Child] = []
    try:
        sim, sim_url = start_simulator(cfg, work, children)
        server, server_url, token = start_server(sim_url, work, children)
        pids = {"server": server.proc.pid, "simulator": sim.proc.pid, "client": os.getpid()}
        target = Target(server_url, token, sim_url, work / "data", pids)
        with asyncio.Runner(loop_factory=loop_factory(cfg.asyncio_loop)) as runner:
            outcome = runner.run(stoppable(asyncio.wait_for(benchmark(cfg, target), cfg.timeout)))
    except TimeoutError:
        print(f"stop_latency: did not finish within --timeout {cfg.timeout:g} s", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("stop_latency: terminated", file=sys.stderr)
        return SIGTERM_EXIT
    finally:
        for child in reversed(children):
            stop_child(child)
        if cfg.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = build_report(cfg, outcome, machine)
    print(render(report))
    print(json.dumps(report, separators=(",", ":")))
    print(f"saved {save(report, outcome).relative_to(REPO)}")
    return 1 if any(report["zero_counts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
