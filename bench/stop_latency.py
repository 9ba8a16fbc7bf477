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

With ``--workers N`` (N >= 2) the server is N ``runforge serve`` processes sharing one PostgreSQL
database (a fresh one per bench run, dropped at the end) and one Redis (a fresh key prefix,
deleted at the end). Run i starts on worker i % N and its stop goes to worker (i + 1) % N, which
does not own it: that worker publishes the stop on the stop channel every worker hears, and the
owner cancels the run and answers it (the row is written only when no owner answers). The
client also subscribes to the stop channel, to timestamp when each stop was published
(``--no-pubsub-tap`` turns that off).

    .venv/bin/python bench/stop_latency.py --workers 2 --runs 500 --pace-ms 15

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
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx
from httpx_sse import aconnect_sse
from redis.asyncio import Redis
from redis.exceptions import RedisError
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import create_async_engine

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
TARGET_P99_MS = 20.0  # one server process
CLUSTER_TARGET_P99_MS = 15.0  # --workers N >= 2, stops sent to the worker that does not own the run
DEFAULT_BROKER_URL = "redis://127.0.0.1:6379/0"
# The PostgreSQL server the benchmark creates its database on (this URL's database is only used
# to run CREATE DATABASE and DROP DATABASE).
DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
INFRA_CONNECT_TIMEOUT_S = 5.0
PID_REFRESH_S = 1.0
TERMINAL = frozenset({"done", "interrupted", "failed"})  # SSE event names
FINAL_STATUSES = frozenset({"completed", "interrupted", "failed"})  # a recorded run's status
USER_STOP = "user_stop"  # the `interrupted` reason of POST /app/chat/stop
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
    workers: int = 1
    broker_url: str = DEFAULT_BROKER_URL
    pg_url: str = DEFAULT_PG_URL
    target_ms: float = TARGET_P99_MS
    pubsub_tap: bool = True

    @property
    def cluster(self) -> bool:
        return self.workers > 1

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
    p.add_argument(
        "--workers", type=int, default=1,
        help="server processes (default 1: one process, SQLite, no broker); 2 or more share PostgreSQL and "
        "Redis, and every stop is sent to a worker that does not own the run",
    )  # fmt: skip
    p.add_argument(
        "--broker-url", default=DEFAULT_BROKER_URL, help=f"Redis, --workers >= 2 (default {DEFAULT_BROKER_URL})"
    )
    p.add_argument(
        "--pg-url", default=DEFAULT_PG_URL,
        help=f"PostgreSQL server to create the bench database on, --workers >= 2 (default {DEFAULT_PG_URL})",
    )  # fmt: skip
    p.add_argument(
        "--target-ms", type=float, default=None,
        help=f"p99 target for (a) and (b) (default {TARGET_P99_MS:g}; {CLUSTER_TARGET_P99_MS:g} with --workers >= 2)",
    )  # fmt: skip
    p.add_argument(
        "--no-pubsub-tap", dest="pubsub_tap", action="store_false",
        help="--workers >= 2: do not subscribe to the stop channels to timestamp each stop's publish",
    )  # fmt: skip
    a = p.parse_args(argv)
    if a.runs < 1 or a.pace_ms <= 0 or not 0 <= a.min_delay <= a.max_delay or not 0 <= a.tools_share <= 1:
        p.error("need --runs >= 1, --pace-ms > 0, 0 <= --min-delay <= --max-delay, 0 <= --tools-share <= 1")
    if a.workers < 1:
        p.error("need --workers >= 1")
    target = a.target_ms if a.target_ms is not None else TARGET_P99_MS if a.workers == 1 else CLUSTER_TARGET_P99_MS
    return Config(
        a.runs, a.pace_ms, a.seed, a.min_delay, a.max_delay, a.tools_share, a.tools_files, a.timeout, a.keep,
        a.asyncio_loop, a.workers, a.broker_url, a.pg_url, target, a.pubsub_tap,
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
    argv = [
        sys.executable,
        "-m",
        "app.simulator",
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--max-records",
        "10000000",
    ]
    argv += ["--pace-ms", str(cfg.pace_ms)]
    child = launch("simulator", argv, clean_env(), work / "simulator.log", children)
    match = wait_for_output(child, r"listening on (http://127\.0\.0\.1:\d+)/v1")
    return child, match[1]


def server_env(sim_url: str, work: Path) -> dict[str, str]:
    return clean_env() | {
        "RUNFORGE_DATA_DIR": str(work / "data"),
        "RUNFORGE_HOST": "127.0.0.1",
        "RUNFORGE_LLM_BASE_URL": f"{sim_url}/v1",
        "RUNFORGE_LLM_API_KEY": "sim",
        "RUNFORGE_LLM_MODEL": "runforge-sim",
        "RUNFORGE_LLM_MAX_RETRIES": "0",
        # One user starts every run at once: the per-user limits (app/limits.py) are not measured here.
        "RUNFORGE_MAX_RUNS_PER_USER": "0",
        "RUNFORGE_GEN_PER_MINUTE": "0",
        "RUNFORGE_STOPS_PER_MINUTE": "0",
    }


SERVE_ARGV = [sys.executable, "-m", "app", "serve", "--port", "0", "--no-access-log"]


@dataclass(frozen=True)
class Server:
    """One Runforge process: ``server`` alone, or worker ``w1``, ``w2``, ... of a cluster."""

    name: str
    url: str
    pid: int


def start_server(
    sim_url: str, work: Path, children: list[Child], env: dict[str, str] | None = None
) -> tuple[Server, str]:
    child = launch("server", SERVE_ARGV, server_env(sim_url, work) | (env or {}), work / "server.log", children)
    match = wait_for_output(child, r"Login URL: (http://127\.0\.0\.1:\d+)/\?token=(\S+)")
    # The banner is printed before uvicorn accepts connections; the client retries /healthz.
    return Server("server", match[1], child.proc.pid), match[2]


def start_workers(
    cfg: Config, sim_url: str, infra: Infra, work: Path, children: list[Child]
) -> tuple[list[Server], str]:
    """Workers w1..wN on one database and one broker, one at a time: the first creates the schema
    and the `local` user (its banner has the login token), the next ones find both."""
    env = server_env(sim_url, work) | {
        "RUNFORGE_DATABASE_URL": infra.database_url,
        "RUNFORGE_BROKER_URL": cfg.broker_url,
        "RUNFORGE_BROKER_PREFIX": infra.prefix,
    }
    servers: list[Server] = []
    token = ""
    for i in range(1, cfg.workers + 1):
        name = f"w{i}"
        child = launch(name, SERVE_ARGV, env | {"RUNFORGE_WORKER_ID": name}, work / f"{name}.log", children)
        url = wait_for_output(child, r"Runforge listening on (http://127\.0\.0\.1:\d+)\n")[1]
        login = wait_for_output(child, r"\nLogin(?: URL: \S+\?token=(\S+)|: .*)\n")
        token = token or login[1] or ""
        wait_healthy(child, url)  # joined the cluster: the next worker finds its row and the user
        servers.append(Server(name, url, child.proc.pid))
    if not token:
        raise RuntimeError("w1 printed no login token (is the database really fresh?)")
    return servers, token


def wait_healthy(child: Child, url: str) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(base_url=url, trust_env=False, timeout=2.0) as http:
        while time.monotonic() < deadline and child.proc.poll() is None:
            with contextlib.suppress(httpx.TransportError):
                if http.get("/healthz").status_code == 200:
                    return
            time.sleep(0.05)
    tail = child.log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"{child.name} did not answer /healthz (exit code {child.proc.poll()}):\n{tail}")


# --------------------------------------------------------------------------- PostgreSQL and Redis


class InfraError(RuntimeError):
    """PostgreSQL or Redis, which --workers >= 2 needs, cannot be reached."""


@dataclass(frozen=True)
class Infra:
    """This bench run's database and Redis key prefix (both new, both removed at the end)."""

    admin_url: str  # the PostgreSQL server, with the database CREATE/DROP DATABASE run from
    database: str
    broker_url: str
    prefix: str

    @property
    def database_url(self) -> str:
        return make_url(self.admin_url).set(database=self.database).render_as_string(hide_password=False)


async def prepare_infra(cfg: Config) -> Infra:
    tag = uuid.uuid4().hex[:10]
    infra = Infra(cfg.pg_url, f"runforge_bench_{tag}", cfg.broker_url, f"rfbench-{tag}")
    redis = Redis.from_url(cfg.broker_url, socket_connect_timeout=INFRA_CONNECT_TIMEOUT_S)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        raise InfraError(
            f"--workers {cfg.workers} needs Redis at {redact(cfg.broker_url)} ({type(exc).__name__}: {exc}); "
            "start it or pass --broker-url"
        ) from None
    finally:
        await redis.aclose()
    engine = create_async_engine(
        cfg.pg_url, isolation_level="AUTOCOMMIT", connect_args={"timeout": INFRA_CONNECT_TIMEOUT_S}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'CREATE DATABASE "{infra.database}"'))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        raise InfraError(
            f"--workers {cfg.workers} needs PostgreSQL at {redact(cfg.pg_url)} to create a database "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); start it or pass --pg-url"
        ) from None
    finally:
        await engine.dispose()
    return infra


async def remove_infra(infra: Infra) -> list[str]:
    """Drop the database (the workers are gone; FORCE ends any connection left) and the keys.
    Returns what could not be removed."""
    problems: list[str] = []
    engine = create_async_engine(
        infra.admin_url, isolation_level="AUTOCOMMIT", connect_args={"timeout": INFRA_CONNECT_TIMEOUT_S}
    )
    try:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP DATABASE IF EXISTS "{infra.database}" WITH (FORCE)'))
    except (SQLAlchemyError, OSError, TimeoutError) as exc:
        problems.append(f"database {infra.database}: {type(exc).__name__}: {exc}")
    finally:
        await engine.dispose()
    redis = Redis.from_url(infra.broker_url, socket_connect_timeout=INFRA_CONNECT_TIMEOUT_S)
    try:
        async for key in redis.scan_iter(match=f"{infra.prefix}:*", count=1000):
            await redis.delete(key)
    except (RedisError, OSError) as exc:
        problems.append(f"Redis keys {infra.prefix}:*: {type(exc).__name__}: {exc}")
    finally:
        await redis.aclose()
    return problems


async def redis_server_pid(broker_url: str) -> int | None:
    """The Redis server's pid, if it runs on this machine (for its CPU use)."""
    redis = Redis.from_url(broker_url, socket_connect_timeout=INFRA_CONNECT_TIMEOUT_S)
    try:
        pid = int((await redis.info("server"))["process_id"])
    except (RedisError, OSError, KeyError, ValueError):
        return None
    finally:
        await redis.aclose()
    return pid if _comm(pid).startswith("redis") else None


def postgres_pids() -> list[int]:
    """Every PostgreSQL process on this machine (the server and its backends)."""
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _comm(int(d.name)) == "postgres"]


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{parts.netloc.rpartition('@')[2]}"))


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from /proc (fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds(pid: int) -> float:
    """cutime + cstime (fields 16 and 17): the CPU of a process's children it has waited for
    (a worker's git and npm processes), counted when they end."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs), from the first line of /proc/stat."""
    jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_sample(
    pids: dict[str, int], groups: dict[str, list[int]] | None = None, children_of: Sequence[str] = ()
) -> dict[str, float]:
    """Cumulative CPU seconds of each process, of each group of processes (Redis, PostgreSQL and
    its backends), of the ended children of the processes named in ``children_of``, and of the
    machine."""
    sample = {name: cpu_seconds(pid) for name, pid in pids.items()}
    if children_of:
        sample["children"] = sum(children_cpu_seconds(pids[name]) for name in children_of)
    for name, members in (groups or {}).items():
        total = 0.0
        for pid in members:
            with contextlib.suppress(OSError, IndexError, ValueError):  # a backend that ended
                total += cpu_seconds(pid)
        sample[name] = total
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
    owner: int = 0  # index of the server the run starts on
    stop_via: int = 0  # index of the server its stop is sent to

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
    owner: str = "server"  # the server the run was started on
    stop_via: str = "server"  # the server its stop was sent to
    status_code: int | None = None
    error: str | None = None
    first_event_at: float | None = None
    first_text_at: float | None = None  # first streamed token: the upstream was really flowing
    events: Counter[str] = field(default_factory=Counter)
    terminal: str | None = None
    terminal_reason: str | None = None
    terminal_at: float | None = None  # (t1) when the terminal event reached this client
    events_after_terminal: int = 0
    late_events: list[str] = field(default_factory=list)  # the first few kinds after the terminal one
    keepalives: int = 0  # SSE keep-alive comments (not events), runs longer than the ping interval
    stream_left_open: bool = False
    stop_sent_at: float | None = None  # (t0) monotonic, just before the POST
    stop_sent_wall: float | None = None  # time.time() at t0, to place the server's wall-clock instants
    stop_answered_at: float | None = None
    # httpx trace events of the stop request -> monotonic instant (e.g. when its body was written).
    stop_trace: dict[str, float] = field(default_factory=dict)
    stop_status: int | None = None
    stop_answer: str | None = None
    # Several workers: when this client, subscribed to the owner's stop channel, got the stop
    # the other worker published (monotonic; None without the tap or if it never came).
    stop_published_at: float | None = None
    snapshot_at_terminal: Snapshot | None = None
    # Filled in by the verification phase.
    server: dict[str, Any] | None = None
    stop_accepted_at: float | None = None  # server's stopRequestedAt, on our monotonic clock
    snapshot_after: Snapshot | None = None
    history_rows: int | None = None
    upstream: list[dict[str, Any]] = field(default_factory=list)
    # Several workers: GET /runs/{id} on a worker that does not own the run, i.e. the database
    # row (the owner answers from memory). Both must tell the same outcome.
    row: dict[str, Any] | None = None

    @property
    def stopped(self) -> bool:
        """The stop was accepted while the run was live (202): it counts for the latencies."""
        return self.stop_status == 202

    @property
    def interrupt_latency(self) -> float | None:
        # Only an `interrupted` that this stop caused: with several workers a run can also be
        # interrupted because its worker was declared lost (reason worker_lost), a failure.
        if not self.stopped or self.terminal != "interrupted" or self.terminal_at is None:
            return None
        if self.terminal_reason != USER_STOP:
            return None
        assert self.stop_sent_at is not None
        return self.terminal_at - self.stop_sent_at


def plan_runs(cfg: Config, app_ids: list[str]) -> list[RunSpec]:
    rng = random.Random(cfg.seed)
    tools = round(cfg.runs * cfg.tools_share)
    scenarios = ["tools_midstream"] * tools + ["long_text"] * (cfg.runs - tools)
    rng.shuffle(scenarios)
    delays = [rng.uniform(cfg.min_delay, cfg.max_delay) for _ in scenarios]  # drawn in the same order as ever
    # Run i on server i % N, its stop to the next one: with N >= 2, never the run's owner.
    return [
        RunSpec(i, f"bench-{i:04d}", app_id, scenario, delay, i % cfg.workers, (i + 1) % cfg.workers)
        for i, (app_id, scenario, delay) in enumerate(zip(app_ids, scenarios, delays, strict=True))
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
    name: str = "server"

    def make(self, connections: int = 1) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, limits=limits, verify=self.ssl,
            trust_env=False,
        )  # fmt: skip


async def drive_run(cfg: Config, servers: list[Clients], spec: RunSpec, workspace: Path) -> RunResult:
    """The run's stream on its owner, its stop on ``spec.stop_via`` (the same server with one)."""
    owner, stop_via = servers[spec.owner], servers[spec.stop_via]
    async with owner.make() as streams, stop_via.make() as stopper:
        result = await follow_run(cfg, streams, stopper, spec, workspace)
    result.owner, result.stop_via = owner.name, stop_via.name
    return result


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
                    if sse.event == "message" and not sse.data:
                        # A keep-alive comment (sse-starlette pings every 15 s): httpx-sse turns
                        # it into an empty `message` once an event had an id. Not an event.
                        result.keepalives += 1
                        if result.terminal is not None and len(result.late_events) < 5:
                            result.late_events.append("keep-alive comment")
                        continue
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
        if len(result.late_events) < 5:
            result.late_events.append(kind)
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
    # GET /healthz round trips, per server (`server`, or w1, w2, ...)
    health_rtt: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
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


async def probe_cpu(pids: dict[str, int], groups: PidGroups, probes: Probes) -> None:
    # Who has the CPUs, 10 times a second: a saturated machine delays every process's timestamps.
    members = groups.members()
    refreshed = time.monotonic()
    while True:
        if time.monotonic() - refreshed >= PID_REFRESH_S:  # new PostgreSQL backends
            members, refreshed = groups.members(), time.monotonic()
        probes.cpu.append((time.monotonic(), cpu_sample(pids, members, groups.children_of)))
        await asyncio.sleep(CPU_PROBE_S)


@dataclass(frozen=True)
class PidGroups:
    """Processes counted together: Redis (one pid) and PostgreSQL (the server and its backends)."""

    redis: int | None = None
    postgres: bool = False
    # Servers whose ended children (git checkpoints, npm) count, all together, as "children".
    children_of: tuple[str, ...] = ()

    def members(self) -> dict[str, list[int]]:
        groups: dict[str, list[int]] = {}
        if self.redis is not None:
            groups["redis"] = [self.redis]
        if self.postgres:
            groups["postgres"] = postgres_pids()
        return groups


# The channel every worker hears stops on, as app/cluster/stops.py names it.
def stops_channel(prefix: str) -> str:
    return f"{prefix}:stops"


async def tap_stops(broker_url: str, channels: list[str], published: dict[str, float], ready: asyncio.Event) -> None:
    """Subscribe next to the workers: when did each stop the other worker sent go out on Redis?

    One more subscriber on the channel (PUBLISH counts it; the workers only check for 0)."""
    redis = Redis.from_url(broker_url, socket_connect_timeout=INFRA_CONNECT_TIMEOUT_S)
    subscribed = 0
    try:
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe(*channels)
            async for message in pubsub.listen():
                if message["type"] == "message":
                    now = time.monotonic()
                    with contextlib.suppress(ValueError, KeyError, TypeError):
                        published.setdefault(json.loads(message["data"])["runId"], now)
                elif message["type"] == "subscribe":
                    subscribed += 1
                    if subscribed == len(channels):
                        ready.set()
    finally:
        await redis.aclose()


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


async def verify_run(
    http: httpx.AsyncClient,
    sim: httpx.AsyncClient,
    result: RunResult,
    workspace: Path,
    elsewhere: httpx.AsyncClient | None = None,
) -> None:
    result.server = await wait_recorded(http, result.run_id)
    if elsewhere is not None:
        result.row = (await elsewhere.get(f"/runs/{result.run_id}")).json()
    accepted = result.server.get("stopRequestedAt")
    if accepted and result.stop_sent_at is not None and result.stop_sent_wall is not None:
        wall = datetime.fromisoformat(accepted).timestamp()
        result.stop_accepted_at = result.stop_sent_at + (wall - result.stop_sent_wall)
    result.snapshot_after = snapshot(workspace)
    if result.terminal == "interrupted" or result.server.get("status") == "interrupted":
        result.history_rows = len((await http.get(f"/apps/{result.app_id}/messages")).json())
    result.upstream = (await sim.get("/_sim/requests", params={"run_id": result.run_id})).json()


async def verify_all(
    http: dict[str, httpx.AsyncClient], sim: httpx.AsyncClient, results: list[RunResult], workspaces: Path
) -> None:
    limit = asyncio.Semaphore(32)

    async def one(result: RunResult) -> None:
        # Asked of the owner: the run is still in its memory, with the instant the stop reached it.
        other = next((name for name in http if name != result.owner), None)
        async with limit:
            await verify_run(http[result.owner], sim, result, workspaces / result.app_id, http.get(other or ""))

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
    registry: dict[str, dict[str, Any]]  # server name -> {"first", "final"} /healthz
    load_seconds: float
    cpu: dict[str, float]  # CPU use during the load phase, in cores (1.0 = one core busy)


@dataclass(frozen=True)
class Target:
    servers: list[Server]
    token: str
    sim_url: str
    data_dir: Path
    pids: dict[str, int]  # process name -> pid, for CPU accounting
    groups: PidGroups = PidGroups()
    infra: Infra | None = None  # several workers: their database and Redis prefix


async def benchmark(cfg: Config, target: Target) -> Outcome:
    timeout = httpx.Timeout(30.0, read=cfg.timeout)
    workspaces = target.data_dir / "workspaces"
    headers = {"Authorization": f"Bearer {target.token}"}
    context = ssl.create_default_context()  # one for all clients (see Clients)
    servers = [Clients(s.url, headers, timeout, context, name=s.name) for s in target.servers]
    sim_clients = Clients(target.sim_url, {}, timeout, context)
    async with contextlib.AsyncExitStack() as stack:
        control = {c.name: await stack.enter_async_context(c.make(connections=32)) for c in servers}
        health = {c.name: await stack.enter_async_context(c.make()) for c in servers}
        sim = await stack.enter_async_context(sim_clients.make(connections=32))
        sim_health = await stack.enter_async_context(sim_clients.make())
        for http in control.values():
            await wait_until_up(http)
        specs = plan_runs(cfg, await create_apps(control[servers[0].name], cfg.runs))
        probes = Probes()
        published: dict[str, float] = {}
        probe_tasks = [
            asyncio.create_task(probe_loop_lag(probes)),
            *(
                asyncio.create_task(probe_health(http, "/healthz", probes.health_rtt.setdefault(name, []), probes))
                for name, http in health.items()
            ),
            asyncio.create_task(probe_health(sim_health, "/_sim/health", probes.sim_rtt, probes)),
            asyncio.create_task(probe_cpu(target.pids, target.groups, probes)),
        ]
        if target.infra is not None and cfg.pubsub_tap:
            ready = asyncio.Event()
            channels = [stops_channel(target.infra.prefix)]
            probe_tasks.append(asyncio.create_task(tap_stops(cfg.broker_url, channels, published, ready)))
            async with asyncio.timeout(STARTUP_TIMEOUT_S):
                await ready.wait()
        cpu_before = cpu_sample(target.pids, target.groups.members(), target.groups.children_of)
        started = time.monotonic()
        # The client's own collector pauses (measured: up to ~90 ms of loop lag) would be
        # counted as stop latency. The load phase is a few seconds: collect later instead.
        gc.collect()
        gc.freeze()
        gc.disable()
        try:
            runs = (drive_run(cfg, servers, spec, workspaces / spec.app_id) for spec in specs)
            results = list(await asyncio.gather(*runs))
        finally:
            gc.enable()
            gc.unfreeze()
            for task in probe_tasks:
                task.cancel()
            await asyncio.gather(*probe_tasks, return_exceptions=True)
        load_seconds = time.monotonic() - started
        cpu_after = cpu_sample(target.pids, target.groups.members(), target.groups.children_of)
        cpu = {name: (cpu_after[name] - cpu_before[name]) / load_seconds for name in cpu_after}
        cpu["others"] = cpu["machine"] - sum(v for name, v in cpu.items() if name != "machine")
        for result in results:
            result.stop_published_at = published.get(result.run_id)
        await verify_all(control, sim, results, workspaces)
        # Every worker must be empty, not only the owners: a stop handled elsewhere leaves nothing.
        registry = {name: await registry_after(http) for name, http in control.items()}
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


# Several workers only: the database row (read on a worker that does not own the run) tells
# another outcome than the owner's memory, e.g. the row was failed as `worker_lost` while the owner
# delivered `interrupted`.
ROW_MISMATCH = "row_differs_from_owner"


def zero_counts(results: list[RunResult], registry: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each check -> the run ids (or registry fields) that broke it; every list must be empty."""
    cluster = (ROW_MISMATCH,) if any(r.row is not None for r in results) else ()
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
            *cluster,
        )
    }
    for r in results:
        for name in run_failures(r):
            checks[name].append(r.run_id)
    for name, seen in registry.items():
        final = seen["final"]
        where = "" if len(registry) == 1 else f"{name}:"
        checks["leftover_registry"] += [f"{where}{k}={final[k]}" for k in ("activeRuns", "runTasks") if final[k]]
    return checks


def run_failures(r: RunResult) -> Iterator[str]:
    server = r.server or {}
    if r.error or r.status_code != 200 or r.terminal == "failed" or r.terminal is None:
        yield "run_errors"
    if r.events_after_terminal:
        yield "events_after_terminal"
    if r.stream_left_open:
        yield "streams_not_closed_after_terminal"
    stop_won = r.terminal == "interrupted" and r.terminal_reason == USER_STOP
    if r.stopped and (not stop_won or server.get("status") != "interrupted"):
        yield "stopped_but_not_interrupted"
    if r.row is not None and (
        r.row.get("status") != server.get("status") or r.row.get("stopReason") != server.get("stopReason")
    ):
        yield ROW_MISMATCH
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
        "keepalive_comments": sum(r.keepalives for r in results),
        # A comment after the terminal event: the stream was not yet closed when a ping was due.
        "keepalive_after_terminal": sum(1 for r in results if "keep-alive comment" in r.late_events),
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


def decomposition(results: list[RunResult], tap: bool = False) -> dict[str, dict[str, float | int | None]]:
    """Where (a) and (b) go, split at the instant the client had written the stop request, and at
    the server's own stop instant (GET /runs/{id} stopRequestedAt, wall clock mapped onto ours).

    With several workers, "accepted" is the owner's instant (the stop went through the other
    worker first), and ``tap`` adds the instant this client saw the stop published on Redis."""
    names = ("sent_to_written", "written_to_accepted", "accepted_to_client", "accepted_to_upstream_closed")
    extra = ("written_to_published", "published_to_accepted", "published_to_stop_answer") if tap else ()
    legs: dict[str, list[float]] = {
        name: [] for name in (*names, *extra, "sent_to_stop_answer", "new_connection_connect")
    }
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
        published = r.stop_published_at
        if tap and published is not None:
            if written is not None:
                legs["written_to_published"].append(published - written)
            legs["published_to_accepted"].append(accepted - published)
            if r.stop_answered_at is not None:
                legs["published_to_stop_answer"].append(r.stop_answered_at - published)
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


def build_report(cfg: Config, outcome: Outcome, machine: dict[str, Any], infra: Infra | None = None) -> dict[str, Any]:
    a = percentiles([v for r in outcome.results if (v := r.interrupt_latency) is not None])
    b = percentiles([v for r in outcome.results if (v := upstream_latency(r)) is not None])
    zeros = zero_counts(outcome.results, outcome.registry)
    servers = list(outcome.registry)
    report: dict[str, Any] = {
        "benchmark": "stop_latency",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(cfg)
        | {"text_tokens": cfg.text_tokens, "broker_url": redact(cfg.broker_url), "pg_url": redact(cfg.pg_url)},
        "machine": machine,
        "processes": processes_text(cfg),
        "client_loop": "asyncio" if loop_factory(cfg.asyncio_loop) is None else "uvloop",
        "latency_ms": {"a_stop_to_interrupted": a, "b_stop_to_upstream_closed": b},
        "target_p99_ms": cfg.target_ms,
        "target": {key: verdict(stats, cfg.target_ms) for key, stats in (("a", a), ("b", b))},
        "decomposition_ms": decomposition(outcome.results, tap=cfg.cluster and cfg.pubsub_tap),
        "startup_ms": startup(outcome.results),
        "zero_counts": {name: len(ids) for name, ids in zeros.items()},
        "zero_count_offenders": {name: ids[:20] for name, ids in zeros.items() if ids},
        "info": info_counts(outcome.results),
        "load": load_info(outcome, servers),
        # One server: its /healthz before and after; several: the same per worker.
        "registry_after": outcome.registry[servers[0]] if len(servers) == 1 else outcome.registry,
    }
    if cfg.cluster:

        def owned(name: str) -> list[RunResult]:
            return [r for r in outcome.results if r.owner == name]

        report["cluster"] = {
            "workers": servers,
            "database": infra.database if infra else None,
            "broker_prefix": infra.prefix if infra else None,
            "runs_by_owner": dict(Counter(r.owner for r in outcome.results)),
            "stops_sent_to_the_owner": sum(1 for r in outcome.results if r.stop_via == r.owner),
            "stops_seen_published": sum(1 for r in outcome.results if r.stop_published_at is not None),
            # The database rows as a worker that does not own the run reports them.
            "row_outcomes": dict(Counter(_row_outcome(r.row) for r in outcome.results)),
        }
        report["latency_by_owner_ms"] = {
            name: {
                "a": percentiles([v for r in owned(name) if (v := r.interrupt_latency) is not None]),
                "b": percentiles([v for r in owned(name) if (v := upstream_latency(r)) is not None]),
            }
            for name in servers
        }
    return report


def _row_outcome(row: dict[str, Any] | None) -> str:
    if row is None:
        return "none"
    detail = (row.get("error") or {}).get("code") or row.get("stopReason") or row.get("finishReason")
    return f"{row.get('status')}:{detail}"


def processes_text(cfg: Config) -> str:
    if not cfg.cluster:
        return "simulator, server and benchmark client: 3 processes sharing the machine's CPUs"
    return (
        f"simulator, {cfg.workers} workers, Redis, PostgreSQL and benchmark client: "
        f"{cfg.workers + 2} Python processes and 2 servers sharing the machine's CPUs"
    )


def verdict(stats: dict[str, float | int | None], target_ms: float) -> str:
    p99 = stats["p99"]
    return "n/a" if p99 is None else "PASS" if p99 <= target_ms else "MISS"


def load_info(outcome: Outcome, servers: list[str]) -> dict[str, Any]:
    health = outcome.probes.health_rtt
    info = {
        "load_phase_s": round(outcome.load_seconds, 2),
        "cpu_cores_used": {name: round(v, 2) for name, v in outcome.cpu.items()},
        "cpu_windows": cpu_windows(outcome.probes.cpu, servers),
        "client_loop_lag_ms": percentiles([lag for _, lag in outcome.probes.loop_lag]),
        "healthz_rtt_ms": percentiles([rtt for series in health.values() for _, rtt in series]),
        "simulator_health_rtt_ms": percentiles([rtt for _, rtt in outcome.probes.sim_rtt]),
        "healthz_errors": outcome.probes.health_errors,
    }
    if len(servers) > 1:
        info["healthz_rtt_ms_by_worker"] = {name: percentiles([rtt for _, rtt in health[name]]) for name in servers}
    return info


def cpu_windows(samples: list[tuple[float, dict[str, float]]], servers: Sequence[str] = ("server",)) -> dict[str, Any]:
    """CPU use per ~100 ms window: how often all CPUs were busy at once, and how often each
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
        **{f"{server}_over_0.9_core": sum(1 for w in windows if w[server] >= 0.9) for server in servers},
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
        f"{'latency (ms)':<44}{'n':>5}{'p50':>9}{'p95':>9}{'p99':>9}{'max':>9}  p99<={report['target_p99_ms']:g}",
    ]
    a, b = report["latency_ms"]["a_stop_to_interrupted"], report["latency_ms"]["b_stop_to_upstream_closed"]
    lines.append(_row("(a) stop sent -> interrupted at client", a, report["target"]["a"]))
    lines.append(_row("(b) stop sent -> upstream closed (simulator)", b, report["target"]["b"]))
    for name, by_owner in report.get("latency_by_owner_ms", {}).items():
        lines.append(_row(f"  (a) runs owned by {name}", by_owner["a"], ""))
        lines.append(_row(f"  (b) runs owned by {name}", by_owner["b"], ""))
    lines.append(
        "  split at 'request written' (client) and stopRequestedAt (server):"
        if "cluster" not in report
        else "  split at 'request written' (client), 'published' (client's Redis tap) and stopRequestedAt (owner):"
    )
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
    if "cluster" in report:
        lines += ["", f"cluster: {report['cluster']}"]
    lines += [
        "",
        f"load phase {load['load_phase_s']} s; CPU cores used (avg): {load['cpu_cores_used']}",
        *_busy_machine_warning(load["cpu_cores_used"]),
        f"~100 ms CPU windows: {load['cpu_windows']}",
        _probe_line("client event-loop lag", load["client_loop_lag_ms"]),
        *(
            [_probe_line("server GET /healthz RTT", load["healthz_rtt_ms"])]
            if "healthz_rtt_ms_by_worker" not in load
            else [_probe_line(f"{n} GET /healthz RTT", stats) for n, stats in load["healthz_rtt_ms_by_worker"].items()]
        ),
        _probe_line("simulator GET /_sim/health RTT", load["simulator_health_rtt_ms"]),
        f"probe errors: {load['healthz_errors']}; registry after: {_registry_text(report['registry_after'])}",
    ]
    return "\n".join(lines)


def _registry_text(registry: dict[str, Any]) -> str:
    if "final" in registry:
        return str(registry["final"])
    return "; ".join(f"{name} {seen['final']}" for name, seen in registry.items())


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
    workers = report["config"]["workers"]
    mode = f"-w{workers}" if workers > 1 else ""
    path = RESULTS_DIR / f"stop_latency-{stamp}{mode}-n{report['config']['runs']}.json"
    health = outcome.probes.health_rtt
    probes = {
        "client_loop_lag": outcome.probes.loop_lag,
        "healthz_rtt": next(iter(health.values())) if len(health) == 1 else health,
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
    infra: Infra | None = None
    if cfg.cluster:
        try:
            infra = asyncio.run(prepare_infra(cfg))
        except InfraError as exc:
            print(f"stop_latency: {exc}", file=sys.stderr)
            return 2
    work = Path(tempfile.mkdtemp(prefix="runforge-bench-"))
    children: list[Child] = []
    try:
        sim, sim_url = start_simulator(cfg, work, children)
        pids = {"simulator": sim.proc.pid, "client": os.getpid()}
        if infra is None:
            server, token = start_server(sim_url, work, children)
            target = Target([server], token, sim_url, work / "data", {"server": server.pid} | pids)
        else:
            servers, token = start_workers(cfg, sim_url, infra, work, children)
            pg_local = bool(postgres_pids())
            names = tuple(s.name for s in servers)
            groups = PidGroups(asyncio.run(redis_server_pid(cfg.broker_url)), pg_local, names)
            target = Target(
                servers, token, sim_url, work / "data", {s.name: s.pid for s in servers} | pids, groups, infra
            )
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
            if infra is not None:
                print(f"kept database {infra.database} and Redis keys {infra.prefix}:*", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
            if infra is not None:
                for problem in asyncio.run(remove_infra(infra)):
                    print(f"stop_latency: could not remove {problem}", file=sys.stderr)
    report = build_report(cfg, outcome, machine, infra)
    print(render(report))
    print(json.dumps(report, separators=(",", ":")))
    print(f"saved {save(report, outcome).relative_to(REPO)}")
    return 1 if any(report["zero_counts"].values()) else 0


if __name__ == "__main__":
    raise SystemExit(main())
