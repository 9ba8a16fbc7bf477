#!/usr/bin/env python3
"""Proxy comparison: one upstream (the LLM simulator) reached directly, through Runforge, through LiteLLM.

Four processes on loopback: the simulator (standalone), Runforge (`runforge serve`, its
``POST /v1/chat/completions`` relaying to the simulator), the LiteLLM proxy (pinned version,
in a venv of its own that this script creates on first use: ``bench/.venv-litellm``) and this
client. The client speaks HTTP/1.1 over raw asyncio streams, so every instant is taken at the
socket, with no HTTP library in between. Three measurements, in this order:

(a) TTFB: N sequential short streams per leg over one kept-alive connection per leg (as a
    pooled chat client would), legs interleaved round-robin; from writing the request to the
    arrival of the body bytes holding the first ``data:`` event. Overhead = leg - direct.
(c) throughput: one unpaced stream of many chunks per repeat, read to the end.
(b) client disconnect -> upstream close: a paced stream, a few chunks read, then the socket
    is aborted at t0; the simulator records when it sees its side closed (``disconnected_at``,
    CLOCK_MONOTONIC like our t0). Also "before the first token": a stream whose first token
    comes only after a delay, closed as soon as the response headers are in (or after
    --headers-wait if the proxy holds its headers back). A fresh connection per trial.

    .venv/bin/python bench/proxy_compare.py            # N=200 / 50 trials / 20,000 chunks
    .venv/bin/python bench/proxy_compare.py --quick    # smoke run

Bounded by --timeout (and --install-timeout for the LiteLLM venv); the subprocesses are
killed on any exit. Results: a markdown table on stdout, JSON in bench/results/.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shlex
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `python bench/x.py` has bench/ there already

from stop_latency import (
    REPO,
    RESULTS_DIR,
    SIGTERM_EXIT,
    Child,
    clean_env,
    cpu_sample,
    cpu_seconds,
    launch,
    loop_factory,
    machine_info,
    percentiles,
    stop_child,
    stoppable,
    wait_for_output,
)

LITELLM_VERSION = "1.100.5"
LITELLM_VENV = REPO / "bench" / ".venv-litellm"
LEGS = ("direct", "runforge", "litellm")
TARGET_TTFB_OVERHEAD_P50_MS = 2.0
TARGET_DISCONNECT_P99_MS = 5.0
READY_TIMEOUT_S = {"runforge": 30.0, "litellm": 120.0}
HEAD_TIMEOUT_S = 10.0  # a response head that takes longer is an error (except in the first-token variant)
STREAM_TIMEOUT_S = 120.0
IDLE_TIMEOUT_S = 20.0  # between phases: wait for the simulator's open streams to end
EARLY_NEVER = 5  # a leg/variant whose first trials all go unseen that many times is not tried further
POLL_DELAYS_S = (0.01, 0.02, 0.05, 0.1, 0.2)  # then every 0.2 s, until --never-after
MARK = b"data:"
DONE = b"[DONE]"


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    quick: bool
    legs: tuple[str, ...]
    ttfb_requests: int
    warmup: int
    ttfb_tokens: int
    ttfb_pace_ms: float
    trials: int
    disconnect_tokens: int
    disconnect_pace_ms: float
    min_read: int
    max_read: int
    first_token_delay_s: float
    headers_wait_s: float
    never_after_s: float
    throughput_tokens: int
    repeats: int
    seed: int
    timeout: float
    install_timeout: float
    keep: bool
    asyncio_loop: bool

    def ttfb_prompt(self, nonce: str) -> str:
        return f"[sim:long_text tokens={self.ttfb_tokens} pace={self.ttfb_pace_ms:g}] nonce {nonce}"

    @property
    def throughput_prompt(self) -> str:
        return f"[sim:long_text tokens={self.throughput_tokens} pace=0] Write a long essay."

    def disconnect_prompt(self, variant: str, nonce: str) -> str:
        pace = f"pace={self.disconnect_pace_ms:g}"
        if variant == "before_first_token":  # few tokens: a proxy that never closes keeps it open less long
            return f"[sim:slow_first_token delay={self.first_token_delay_s:g} tokens=50 {pace}] nonce {nonce}"
        return f"[sim:long_text tokens={self.disconnect_tokens} {pace}] nonce {nonce}"


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="smoke run: 30 TTFB requests, 10 trials, 5,000 chunks")
    p.add_argument("--legs", default=",".join(LEGS), help=f"comma-separated subset of {','.join(LEGS)}")
    p.add_argument("--requests", type=int, help="(a) measured requests per leg (default 200, quick 30)")
    p.add_argument("--warmup", type=int, default=10, help="(a) unmeasured requests per leg first (default 10)")
    p.add_argument("--trials", type=int, help="(b) trials per leg and variant (default 50, quick 10)")
    p.add_argument("--chunks", type=int, help="(c) chunks per stream (default 20000, quick 5000)")
    p.add_argument("--repeats", type=int, default=3, help="(c) streams per leg (default 3)")
    p.add_argument("--never-after", type=float, default=3.0, help="(b) s after the close to give up (default 3)")
    p.add_argument("--headers-wait", type=float, default=1.0, help="(b) s to wait for headers before closing anyway")
    p.add_argument("--seed", type=int, default=1, help="seed for the chunks read before each close")
    p.add_argument("--timeout", type=float, default=1800.0, help="time limit of the measurements, s")
    p.add_argument("--install-timeout", type=float, default=900.0, help="time limit of the LiteLLM install, s")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (process logs, configs)")
    p.add_argument("--asyncio-loop", action="store_true", help="run this client on asyncio's loop, not uvloop")
    a = p.parse_args(argv)
    legs = tuple(name for name in a.legs.split(",") if name)
    if "direct" not in legs or not set(legs) <= set(LEGS):
        p.error(f"--legs must include direct and name only {', '.join(LEGS)}")
    requests = a.requests if a.requests is not None else 30 if a.quick else 200
    trials = a.trials if a.trials is not None else 10 if a.quick else 50
    chunks = a.chunks if a.chunks is not None else 5000 if a.quick else 20000
    if min(requests, trials, chunks, a.repeats) < 1 or a.warmup < 0 or a.never_after <= 0:
        p.error("counts must be >= 1, --warmup >= 0, --never-after > 0")
    return Config(
        quick=a.quick, legs=legs, ttfb_requests=requests, warmup=a.warmup, ttfb_tokens=5, ttfb_pace_ms=1.0,
        trials=trials, disconnect_tokens=500, disconnect_pace_ms=20.0, min_read=3, max_read=10,
        first_token_delay_s=5.0, headers_wait_s=a.headers_wait, never_after_s=a.never_after,
        throughput_tokens=chunks, repeats=a.repeats, seed=a.seed, timeout=a.timeout,
        install_timeout=a.install_timeout, keep=a.keep, asyncio_loop=a.asyncio_loop,
    )  # fmt: skip


# --------------------------------------------------------------------------- processes


@dataclass(frozen=True)
class Leg:
    """One way to reach the simulator's chat completions."""

    name: str
    port: int
    model: str
    auth: str | None = None  # bearer token
    host: str = "127.0.0.1"
    path: str = "/v1/chat/completions"


@dataclass
class Stack:
    sim: Leg
    legs: list[Leg]
    pids: dict[str, int]
    unavailable: dict[str, str] = field(default_factory=dict)  # leg -> why it is not measured
    versions: dict[str, str] = field(default_factory=dict)


class LegUnavailable(Exception):
    """A leg that cannot be started; the others are still measured."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def stop_all(children: list[Child]) -> None:
    for child in reversed(children):
        stop_child(child)
        # Each child leads its own session: take down anything it started too (LiteLLM workers).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(child.proc.pid, signal.SIGKILL)


def start_simulator(work: Path, children: list[Child]) -> Leg:
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
        "--pace-ms",
        "20",
    ]
    child = launch("simulator", argv, clean_env(), work / "simulator.log", children)
    match = wait_for_output(child, r"listening on http://127\.0\.0\.1:(\d+)/v1")
    return Leg("direct", int(match[1]), "runforge-sim")


def wait_ready(url: str, timeout: float, child: Child) -> None:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=5.0, trust_env=False) as http:
        while time.monotonic() < deadline:
            if child.proc.poll() is not None:
                break
            with contextlib.suppress(httpx.HTTPError):
                if http.get(url).status_code == 200:
                    return
            time.sleep(0.2)
    tail = child.log.read_text(errors="replace")[-2000:]
    raise LegUnavailable(f"{child.name} not ready at {url} (exit code {child.proc.poll()}):\n{tail}")


def start_runforge(sim: Leg, work: Path, children: list[Child]) -> Leg:
    env = clean_env() | {
        "RUNFORGE_DATA_DIR": str(work / "data"),
        "RUNFORGE_HOST": "127.0.0.1",
        "RUNFORGE_LLM_BASE_URL": f"http://127.0.0.1:{sim.port}/v1",
        "RUNFORGE_LLM_API_KEY": "x",
        "RUNFORGE_LLM_MODEL": "runforge-sim",
        "RUNFORGE_LLM_MAX_RETRIES": "0",
        # One user starts every run at once: the per-user limits (app/limits.py) are not measured here.
        "RUNFORGE_MAX_RUNS_PER_USER": "0",
        "RUNFORGE_GEN_PER_MINUTE": "0",
        "RUNFORGE_STOPS_PER_MINUTE": "0",
        "RUNFORGE_BUILD": "0",
    }
    runforge = str(Path(sys.executable).parent / "runforge")
    added = subprocess.run(
        [runforge, "user", "add", "bench"], cwd=REPO, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = added.stdout.strip().splitlines()
    if added.returncode != 0 or not lines:
        raise LegUnavailable(f"runforge user add failed ({added.returncode}): {added.stderr[-1000:]}")
    argv = [runforge, "serve", "--port", "0", "--no-access-log"]
    child = launch("runforge", argv, env, work / "runforge.log", children)
    port = int(wait_for_output(child, r"Runforge listening on http://127\.0\.0\.1:(\d+)")[1])
    wait_ready(f"http://127.0.0.1:{port}/healthz", READY_TIMEOUT_S["runforge"], child)
    return Leg("runforge", port, "runforge-sim", auth=lines[-1].strip())


def litellm_version(python: Path) -> str | None:
    if not python.exists():
        return None
    probe = [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"]
    found = subprocess.run(probe, capture_output=True, text=True, timeout=60)
    return found.stdout.strip() if found.returncode == 0 else None


def ensure_litellm(cfg: Config) -> Path:
    """The pinned LiteLLM in its own venv, created on first use; returns the venv's litellm."""
    python = LITELLM_VENV / "bin" / "python"
    if litellm_version(python) == LITELLM_VERSION:
        return LITELLM_VENV / "bin" / "litellm"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    log = RESULTS_DIR / "litellm-install.log"
    print(f"installing litellm[proxy]=={LITELLM_VERSION} into {LITELLM_VENV} (log: {log})", flush=True)
    deadline = time.monotonic() + cfg.install_timeout
    steps = [
        [sys.executable, "-m", "venv", "--clear", str(LITELLM_VENV)],  # a venv's python makes a plain venv too
        [str(python), "-m", "pip", "install", "--disable-pip-version-check", f"litellm[proxy]=={LITELLM_VERSION}"],
    ]
    with log.open("w") as out:
        for argv in steps:
            try:
                code = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, timeout=deadline - time.monotonic())
            except subprocess.TimeoutExpired as exc:
                raise LegUnavailable(f"LiteLLM install exceeded --install-timeout {cfg.install_timeout:g} s") from exc
            if code.returncode != 0:
                tail = "\n".join(line for line in log.read_text().splitlines() if "is ignored" not in line)[-2000:]
                raise LegUnavailable(f"`{shlex.join(argv)}` failed ({code.returncode}):\n{tail}")
    if litellm_version(python) != LITELLM_VERSION:
        raise LegUnavailable(f"litellm {LITELLM_VERSION} not importable after install; see {log}")
    return LITELLM_VENV / "bin" / "litellm"


def litellm_env() -> dict[str, str]:
    return clean_env() | {
        "LITELLM_TELEMETRY": "False",
        "LITELLM_LOG": "ERROR",
        "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # no fetch of the price list at start-up
        "LITELLM_MODE": "PRODUCTION",  # no .env loading
        "DISABLE_ADMIN_UI": "True",
        "NO_DOCS": "True",
    }


UVICORN_LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "plain", "stream": "ext://sys.stderr"}},
    "loggers": {
        "uvicorn": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
    },
}


def start_litellm(cfg: Config, sim: Leg, work: Path, children: list[Child]) -> Leg:
    binary = ensure_litellm(cfg)
    config = {
        "model_list": [
            {
                "model_name": "sim",
                "litellm_params": {
                    "model": "openai/runforge-sim",
                    "api_base": f"http://127.0.0.1:{sim.port}/v1",
                    "api_key": "x",
                },
            }
        ],
        "litellm_settings": {"telemetry": False, "callbacks": [], "success_callback": [], "failure_callback": []},
        "general_settings": {"disable_spend_logs": True, "disable_error_logs": True},
    }
    path = work / "litellm.yaml"
    path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    # No access log, like Runforge's --no-access-log: a line per request is work neither should do here.
    logging_config = work / "litellm-logging.json"
    logging_config.write_text(json.dumps(UVICORN_LOGGING))
    port = free_port()
    argv = [str(binary), "--config", str(path), "--host", "127.0.0.1", "--port", str(port)]
    argv += ["--num_workers", "1", "--telemetry", "False", "--log_config", str(logging_config)]
    child = launch("litellm", argv, litellm_env(), work / "litellm.log", children)
    wait_ready(f"http://127.0.0.1:{port}/health/liveliness", READY_TIMEOUT_S["litellm"], child)
    return Leg("litellm", port, "sim")


def start_stack(cfg: Config, work: Path, children: list[Child]) -> Stack:
    sim = start_simulator(work, children)
    stack = Stack(sim, [sim], {"client": os.getpid(), "simulator": children[-1].proc.pid})
    stack.versions["runforge_commit"] = subprocess_text(["git", "rev-parse", "HEAD"])
    starters: dict[str, Callable[[], Leg]] = {
        "runforge": lambda: start_runforge(sim, work, children),
        "litellm": lambda: start_litellm(cfg, sim, work, children),
    }
    for name in (n for n in cfg.legs if n != "direct"):
        try:
            stack.legs.append(starters[name]())
            stack.pids[name] = children[-1].proc.pid
        except (LegUnavailable, RuntimeError, subprocess.SubprocessError) as exc:
            stack.unavailable[name] = str(exc)
            print(f"{name}: not measured: {exc}", file=sys.stderr)
    if "litellm" in stack.pids:
        stack.versions["litellm"] = litellm_version(LITELLM_VENV / "bin" / "python") or "unknown"
    return stack


def subprocess_text(argv: list[str]) -> str:
    try:
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# --------------------------------------------------------------------------- HTTP/1.1 over raw sockets


@dataclass(frozen=True)
class Head:
    status: int
    headers: dict[str, str]

    @property
    def chunked(self) -> bool:
        return "chunked" in self.headers.get("transfer-encoding", "").lower()

    @property
    def length(self) -> int | None:
        value = self.headers.get("content-length")
        return int(value) if value is not None else None

    @property
    def keep_alive(self) -> bool:
        framed = self.chunked or self.length is not None
        return framed and self.headers.get("connection", "").lower() != "close"


class Connection:
    """One HTTP/1.1 connection; request bytes go out in one write, TCP_NODELAY on."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.reusable = True

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return cls(reader, writer)

    def send(self, request: bytes) -> float:
        sent_at = time.monotonic()
        self.writer.write(request)  # small: written to the socket before write() returns
        return sent_at

    async def read_head(self) -> Head:
        raw = await self.reader.readuntil(b"\r\n\r\n")
        status_line, *lines = raw.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        return Head(int(status_line.split()[1]), headers)

    async def body(self, head: Head) -> AsyncIterator[tuple[float, bytes]]:
        """Body pieces as they arrive, each with time.monotonic() right after it was read."""
        if head.chunked:
            async for piece in self._chunked():
                yield piece
        elif head.length is not None:
            left = head.length
            while left:
                data = await self.reader.read(min(left, 1 << 16))
                if not data:
                    raise asyncio.IncompleteReadError(b"", left)
                left -= len(data)
                yield time.monotonic(), data
        else:  # until the server closes
            self.reusable = False
            while data := await self.reader.read(1 << 16):
                yield time.monotonic(), data
        if not head.keep_alive:
            self.reusable = False

    async def _chunked(self) -> AsyncIterator[tuple[float, bytes]]:
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await self.reader.readuntil(b"\r\n") != b"\r\n":  # trailers
                    pass
                return
            data = await self.reader.readexactly(size + 2)
            yield time.monotonic(), data[:-2]

    def abort(self) -> None:
        """Close at once: no FIN-after-flush, and an RST if the kernel holds unread data."""
        self.reusable = False
        self.writer.transport.abort()

    async def close(self) -> None:
        self.reusable = False
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


def chat_request(leg: Leg, prompt: str) -> bytes:
    body = json.dumps({"model": leg.model, "messages": [{"role": "user", "content": prompt}], "stream": True})
    lines = [
        f"POST {leg.path} HTTP/1.1",
        f"Host: {leg.host}:{leg.port}",
        "Content-Type: application/json",
        "Accept: text/event-stream",
        f"Content-Length: {len(body.encode())}",
    ]
    if leg.auth:
        lines.append(f"Authorization: Bearer {leg.auth}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


class SseCounter:
    """Counts ``data:`` events and bytes of a body fed in arbitrary pieces."""

    def __init__(self) -> None:
        self.events = 0
        self.bytes = 0
        self.done = False
        # The end of the previous piece, one byte shorter than the marker: a marker cut in two is
        # found, and none can lie wholly inside it, so none is counted twice.
        self._mark_tail = b""
        self._done_tail = b""

    def feed(self, data: bytes) -> None:
        window = self._mark_tail + data
        self.events += window.count(MARK)
        self._mark_tail = window[-(len(MARK) - 1) :]
        if not self.done:
            window = self._done_tail + data
            self.done = DONE in window
            self._done_tail = window[-(len(DONE) - 1) :]
        self.bytes += len(data)


@dataclass
class Stream:
    """One request read to its end."""

    status: int = 0
    sent_at: float = 0.0
    head_at: float | None = None
    first_data_at: float | None = None
    end_at: float | None = None
    events: int = 0
    bytes: int = 0
    done: bool = False
    error: str | None = None

    @property
    def ttfb(self) -> float | None:
        return None if self.first_data_at is None else self.first_data_at - self.sent_at

    @property
    def elapsed(self) -> float | None:
        return None if self.end_at is None else self.end_at - self.sent_at


class Session:
    """A leg's kept-alive connection, reopened when the server ends it (counted)."""

    def __init__(self, leg: Leg) -> None:
        self.leg = leg
        self.conn: Connection | None = None
        self.connects = 0

    async def stream(self, prompt: str) -> Stream:
        if self.conn is None or not self.conn.reusable or self.conn.reader.at_eof():
            if self.conn is not None:
                await self.conn.close()
            self.conn = await Connection.open(self.leg.host, self.leg.port)
            self.connects += 1
        try:
            return await asyncio.wait_for(read_stream(self.conn, self.leg, prompt), STREAM_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError) as exc:
            self.conn.abort()
            return Stream(error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()


async def read_stream(conn: Connection, leg: Leg, prompt: str) -> Stream:
    result = Stream(sent_at=conn.send(chat_request(leg, prompt)))
    head = await conn.read_head()
    result.head_at, result.status = time.monotonic(), head.status
    counter = SseCounter()
    first_piece = b""
    async for at, data in conn.body(head):
        counter.feed(data)
        first_piece = first_piece or data
        if result.first_data_at is None and counter.events:
            result.first_data_at = at
    result.end_at = time.monotonic()
    result.events, result.bytes, result.done = counter.events, counter.bytes, counter.done
    if head.status != 200:
        result.error = f"HTTP {head.status}: {first_piece[:300]!r}"
    elif not counter.done:
        result.error = "stream ended without [DONE]"
    return result


# --------------------------------------------------------------------------- (a) TTFB


@dataclass
class TtfbLeg:
    samples: list[float] = field(default_factory=list)  # seconds
    errors: Counter[str] = field(default_factory=Counter)
    connects: int = 0
    # nonce -> (sent_at, head_at, first_data_at), to place the simulator's instants afterwards
    instants: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    split: dict[str, list[float]] = field(default_factory=dict)  # see split_ttfb()


async def measure_ttfb(cfg: Config, legs: list[Leg]) -> dict[str, TtfbLeg]:
    sessions = {leg.name: Session(leg) for leg in legs}
    results = {leg.name: TtfbLeg() for leg in legs}
    try:
        for i in range(cfg.warmup):
            for leg in legs:
                await sessions[leg.name].stream(cfg.ttfb_prompt(f"warmup-{leg.name}-{i}"))
        for i in range(cfg.ttfb_requests):
            # Round-robin, the starting leg rotating: drift and ordering hit every leg alike.
            for leg in legs[i % len(legs) :] + legs[: i % len(legs)]:
                nonce = f"ttfb-{leg.name}-{i}"
                stream = await sessions[leg.name].stream(cfg.ttfb_prompt(nonce))
                result = results[leg.name]
                if stream.error is not None or stream.first_data_at is None or stream.head_at is None:
                    result.errors[str(stream.error)[:120]] += 1
                    continue
                result.samples.append(stream.first_data_at - stream.sent_at)
                result.instants[nonce] = (stream.sent_at, stream.head_at, stream.first_data_at)
    finally:
        for name, session in sessions.items():
            results[name].connects = session.connects
            await session.close()
    return results


def split_ttfb(results: dict[str, TtfbLeg], records: list[dict[str, Any]]) -> None:
    """Where each TTFB goes, with the simulator's instants of the same request:
    to_upstream = request sent -> the simulator starts it (the proxy's inbound path + its request);
    upstream = the simulator's own start -> first chunk written (the same for every leg);
    from_upstream = first chunk written -> its bytes arrive here (the proxy's relay path);
    to_headers = request sent -> response headers here."""
    by_nonce = {r["last_user_message"].rsplit("nonce ", 1)[-1]: r for r in records}
    for result in results.values():
        result.split = {"to_upstream": [], "upstream": [], "from_upstream": [], "to_headers": []}
        for nonce, (sent_at, head_at, first_data_at) in result.instants.items():
            record = by_nonce.get(nonce)
            result.split["to_headers"].append(head_at - sent_at)
            if record is None or record["first_chunk_at"] is None:
                continue
            result.split["to_upstream"].append(record["started_at"] - sent_at)
            result.split["upstream"].append(record["first_chunk_at"] - record["started_at"])
            result.split["from_upstream"].append(first_data_at - record["first_chunk_at"])


# --------------------------------------------------------------------------- (c) throughput


@dataclass
class Throughput:
    runs: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def best(self, key: str) -> float | None:
        values = [run[key] for run in self.runs]
        return max(values) if values else None

    def median(self, key: str) -> float | None:
        values = [run[key] for run in self.runs]
        return statistics.median(values) if values else None


async def measure_throughput(cfg: Config, legs: list[Leg], pids: dict[str, int]) -> dict[str, Throughput]:
    """Each leg's streams in turn; also the CPU time its server process spent per chunk
    (direct: the simulator's; a proxy's own, without the simulator's share)."""
    results = {}
    for leg in legs:
        session, result = Session(leg), Throughput()
        server = "simulator" if leg.name == "direct" else leg.name
        try:
            for _ in range(cfg.repeats):
                cpu_before = cpu_seconds(pids[server])
                stream = await session.stream(cfg.throughput_prompt)
                cpu_used = cpu_seconds(pids[server]) - cpu_before
                if stream.error is not None or not stream.elapsed:
                    result.errors.append(str(stream.error))
                    continue
                result.runs.append(
                    {
                        "seconds": round(stream.elapsed, 4),
                        "events": stream.events,
                        "bytes": stream.bytes,
                        "events_per_s": round(stream.events / stream.elapsed),
                        "mb_per_s": round(stream.bytes / stream.elapsed / 1e6, 2),
                        "server_cpu_us_per_event": round(cpu_used / max(1, stream.events) * 1e6, 2),
                    }
                )
        finally:
            await session.close()
        results[leg.name] = result
    return results


# --------------------------------------------------------------------------- (b) disconnect


VARIANTS = ("mid_stream", "before_first_token")


@dataclass
class Trial:
    nonce: str
    read_events: int  # chunks read before the close (0: before the first token)
    headers_seen: bool = False
    t0: float | None = None  # time.monotonic() just before the abort
    outcome: str = "error"  # closed | never | completed | no_upstream | error
    latency: float | None = None  # disconnected_at - t0, when closed within --never-after
    upstream_started_after_close: bool = False
    error: str | None = None


@dataclass
class DisconnectLeg:
    trials: list[Trial] = field(default_factory=list)
    stopped_early: bool = False

    @property
    def latencies(self) -> list[float]:
        return [t.latency for t in self.trials if t.latency is not None]

    @property
    def outcomes(self) -> dict[str, int]:
        return dict(Counter(t.outcome for t in self.trials))


class Simulator:
    """Reads the simulator's request log over HTTP."""

    def __init__(self, leg: Leg) -> None:
        self.http = httpx.AsyncClient(base_url=f"http://{leg.host}:{leg.port}", timeout=10.0, trust_env=False)

    async def records(self) -> list[dict[str, Any]]:
        response = await self.http.get("/_sim/requests")
        response.raise_for_status()
        records: list[dict[str, Any]] = response.json()
        return records

    async def find(self, nonce: str) -> dict[str, Any] | None:
        return next((r for r in reversed(await self.records()) if nonce in r["last_user_message"]), None)

    async def wait_idle(self, limit_s: float) -> int:
        """Wait until no request is open; returns how many still were after ``limit_s``."""
        deadline = time.monotonic() + limit_s
        while True:
            still_open = sum(1 for r in await self.records() if is_open(r))
            if not still_open or time.monotonic() > deadline:
                return still_open
            await asyncio.sleep(0.2)

    async def aclose(self) -> None:
        await self.http.aclose()


def is_open(record: dict[str, Any]) -> bool:
    return record["finished_at"] is None and record["disconnected_at"] is None and record["error"] is None


async def close_stream(cfg: Config, leg: Leg, variant: str, trial: Trial) -> None:
    """Start a stream, read ``trial.read_events`` chunks (or only the headers), abort the socket."""
    conn = await Connection.open(leg.host, leg.port)
    try:
        conn.send(chat_request(leg, cfg.disconnect_prompt(variant, trial.nonce)))
        if variant == "before_first_token":
            with contextlib.suppress(TimeoutError):  # a proxy may hold its headers until the first token
                await asyncio.wait_for(conn.read_head(), cfg.headers_wait_s)
                trial.headers_seen = True
        else:
            head = await asyncio.wait_for(conn.read_head(), HEAD_TIMEOUT_S)
            trial.headers_seen = True
            if head.status != 200:
                raise RuntimeError(f"HTTP {head.status}")
            counter = SseCounter()
            async with contextlib.aclosing(conn.body(head)) as pieces:
                async for _, data in pieces:
                    counter.feed(data)
                    if counter.events >= trial.read_events:
                        break
            if counter.events < trial.read_events:
                raise RuntimeError(f"stream ended after {counter.events} chunks")
    finally:
        trial.t0 = time.monotonic()
        conn.abort()


async def observe_upstream(cfg: Config, sim: Simulator, trial: Trial) -> None:
    """Poll the simulator's log (backing off) until it saw the close, or --never-after passed."""
    assert trial.t0 is not None
    deadline = trial.t0 + cfg.never_after_s
    delays = iter(POLL_DELAYS_S)
    while True:
        await asyncio.sleep(max(0.0, min(next(delays, POLL_DELAYS_S[-1]), deadline - time.monotonic())))
        record = await sim.find(trial.nonce)
        if record is not None:
            trial.upstream_started_after_close = record["started_at"] > trial.t0
            if record["disconnected_at"] is not None:
                latency = record["disconnected_at"] - trial.t0
                trial.outcome, trial.latency = ("closed", latency) if latency <= cfg.never_after_s else ("never", None)
                return
            if record["finished_at"] is not None or record["error"] is not None:
                trial.outcome = "completed"  # the proxy read the whole upstream response
                return
        if time.monotonic() >= deadline:
            trial.outcome = "never" if record is not None else "no_upstream"
            return


async def measure_disconnects(cfg: Config, legs: list[Leg], sim: Simulator) -> dict[str, dict[str, DisconnectLeg]]:
    rng = random.Random(cfg.seed)
    results: dict[str, dict[str, DisconnectLeg]] = {}
    for variant in VARIANTS:
        results[variant] = {}
        for leg in legs:
            results[variant][leg.name] = result = DisconnectLeg()
            for _ in range(cfg.trials):
                reads = 0 if variant == "before_first_token" else rng.randint(cfg.min_read, cfg.max_read)
                trial = Trial(uuid.uuid4().hex, reads)
                result.trials.append(trial)
                try:
                    await close_stream(cfg, leg, variant, trial)
                    await observe_upstream(cfg, sim, trial)
                except (OSError, asyncio.IncompleteReadError, RuntimeError, ValueError, TimeoutError) as exc:
                    trial.outcome, trial.error = "error", f"{type(exc).__name__}: {exc}"
                if len(result.trials) == EARLY_NEVER and not result.latencies:
                    result.stopped_early = True  # it will not get better: spare the time
                    break
            await sim.wait_idle(IDLE_TIMEOUT_S)
    return results


# --------------------------------------------------------------------------- the run


@dataclass
class Outcome:
    available: list[str]
    ttfb: dict[str, TtfbLeg]
    throughput: dict[str, Throughput]
    disconnect: dict[str, dict[str, DisconnectLeg]]
    cpu: dict[str, dict[str, float]]  # phase -> process -> cores used on average
    idle_left_open: dict[str, int]


async def probe_legs(cfg: Config, stack: Stack) -> list[Leg]:
    """One request per leg: a leg that does not stream (e.g. the endpoint is not there yet) is left out."""
    usable = []
    for leg in stack.legs:
        session = Session(leg)
        try:
            stream = await session.stream(cfg.ttfb_prompt(f"probe-{leg.name}"))
        finally:
            await session.close()
        if stream.error is None:
            usable.append(leg)
        else:
            stack.unavailable[leg.name] = f"probe request failed: {stream.error}"
            print(f"{leg.name}: not measured: {stream.error}", file=sys.stderr)
    return usable


async def benchmark(cfg: Config, stack: Stack) -> Outcome:
    legs = await probe_legs(cfg, stack)
    if not legs or legs[0].name != "direct":
        raise RuntimeError(f"the direct leg does not work: {stack.unavailable.get('direct')}")
    sim = Simulator(stack.sim)
    cpu: dict[str, dict[str, float]] = {}
    idle: dict[str, int] = {}
    try:
        start = phase_start(stack)
        ttfb = await measure_ttfb(cfg, legs)
        cpu["a_ttfb"] = phase_cpu(stack, start)
        split_ttfb(ttfb, await sim.records())
        idle["a_ttfb"] = await sim.wait_idle(IDLE_TIMEOUT_S)
        start = phase_start(stack)
        throughput = await measure_throughput(cfg, legs, stack.pids)
        cpu["c_throughput"] = phase_cpu(stack, start)
        idle["c_throughput"] = await sim.wait_idle(IDLE_TIMEOUT_S)
        start = phase_start(stack)
        disconnect = await measure_disconnects(cfg, legs, sim)
        cpu["b_disconnect"] = phase_cpu(stack, start)
        idle["b_disconnect"] = await sim.wait_idle(IDLE_TIMEOUT_S)
    finally:
        await sim.aclose()
    return Outcome([leg.name for leg in legs], ttfb, throughput, disconnect, cpu, idle)


def phase_start(stack: Stack) -> tuple[float, dict[str, float]]:
    return time.monotonic(), cpu_sample(stack.pids)


def phase_cpu(stack: Stack, start: tuple[float, dict[str, float]]) -> dict[str, float]:
    """Average cores used during a phase, per process; "others" is everything else on the machine."""
    (t0, before), t1, after = start, time.monotonic(), cpu_sample(stack.pids)
    used = {name: (after[name] - before[name]) / (t1 - t0) for name in after}
    used["others"] = used["machine"] - sum(v for k, v in used.items() if k != "machine")
    return {name: round(v, 2) for name, v in used.items()} | {"seconds": round(t1 - t0, 1)}


# --------------------------------------------------------------------------- report


def build_report(cfg: Config, stack: Stack, outcome: Outcome, machine: dict[str, Any], command: str) -> dict[str, Any]:
    ttfb = {name: percentiles(leg.samples) for name, leg in outcome.ttfb.items()}
    direct = ttfb["direct"]
    legs: dict[str, Any] = {}
    for name in outcome.available:
        stats = ttfb[name]
        tp = outcome.throughput[name]
        legs[name] = {
            "ttfb_ms": stats,
            "ttfb_overhead_ms": {k: _diff(stats[k], direct[k]) for k in ("p50", "p95", "p99", "mean")},
            "ttfb_errors": dict(outcome.ttfb[name].errors),
            "ttfb_connections_opened": outcome.ttfb[name].connects,
            "ttfb_split_ms": {part: percentiles(values) for part, values in outcome.ttfb[name].split.items()},
            "disconnect": {
                variant: {
                    "latency_ms": percentiles(outcome.disconnect[variant][name].latencies),
                    "outcomes": outcome.disconnect[variant][name].outcomes,
                    "stopped_early": outcome.disconnect[variant][name].stopped_early,
                    "headers_seen": sum(1 for t in outcome.disconnect[variant][name].trials if t.headers_seen),
                    "upstream_started_after_close": sum(
                        1 for t in outcome.disconnect[variant][name].trials if t.upstream_started_after_close
                    ),
                    "errors": dict(Counter(t.error for t in outcome.disconnect[variant][name].trials if t.error)),
                }
                for variant in VARIANTS
            },
            "throughput": {
                "best_events_per_s": tp.best("events_per_s"),
                "median_events_per_s": tp.median("events_per_s"),
                "best_mb_per_s": tp.best("mb_per_s"),
                "median_mb_per_s": tp.median("mb_per_s"),
                "median_server_cpu_us_per_event": tp.median("server_cpu_us_per_event"),
                "runs": tp.runs,
                "errors": tp.errors,
            },
        }
    return {
        "benchmark": "proxy_compare",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": command,
        "config": asdict(cfg),
        "machine": machine,
        "versions": stack.versions,
        "client": "raw asyncio streams, HTTP/1.1; (a)+(c): one kept-alive connection per leg; (b): one per trial",
        "unavailable": stack.unavailable,
        "legs": legs,
        "targets": targets(legs),
        "cpu_cores_by_phase": outcome.cpu,
        "simulator_requests_left_open_after_phase": outcome.idle_left_open,
    }


def _diff(a: float | int | None, b: float | int | None) -> float | None:
    return None if a is None or b is None else round(a - b, 2)


def targets(legs: dict[str, Any]) -> dict[str, str]:
    if "runforge" not in legs:
        return {"runforge": "not measured"}
    rf = legs["runforge"]
    overhead = rf["ttfb_overhead_ms"]["p50"]
    result = {f"ttfb_overhead_p50<={TARGET_TTFB_OVERHEAD_P50_MS:g}ms": _verdict(overhead, TARGET_TTFB_OVERHEAD_P50_MS)}
    for variant, stats in rf["disconnect"].items():
        missing = sum(n for outcome, n in stats["outcomes"].items() if outcome not in ("closed", "no_upstream"))
        p99 = stats["latency_ms"]["p99"] if not missing else None
        result[f"disconnect_{variant}_p99<={TARGET_DISCONNECT_P99_MS:g}ms"] = (
            "MISS (not always closed)" if missing else _verdict(p99, TARGET_DISCONNECT_P99_MS)
        )
    return result


def _verdict(value: float | None, limit: float) -> str:
    return "n/a" if value is None else "PASS" if value <= limit else "MISS"


def render(report: dict[str, Any]) -> str:
    cfg, machine, versions, legs = report["config"], report["machine"], report["versions"], report["legs"]
    lines = [
        f"command: {report['command']}",
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), {machine['platform']}, Python {machine['python']}",
        f"runforge commit {machine['git_commit'][:12]}"
        + (f" + {len(machine['git_changes'])} uncommitted change(s)" if machine["git_changes"] else "")
        + (f"; litellm {versions['litellm']}" if "litellm" in versions else ""),
        f"client: {report['client']}",
        "",
        f"| leg | TTFB p50 | TTFB p99 | overhead p50 | overhead p99 | disconnect mid-stream → upstream closed "
        f"p50 / p99 / max | disconnect before first token → upstream closed p50 / p99 / max | "
        f"chunks/s (best of {cfg['repeats']}) | MB/s (best) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, leg in report["legs"].items():
        t, o, tp = leg["ttfb_ms"], leg["ttfb_overhead_ms"], leg["throughput"]
        overhead = ("—", "—") if name == "direct" else (_signed(o["p50"]), _signed(o["p99"]))
        cells = [
            name, _num(t["p50"]), _num(t["p99"]), *overhead,
            *(disconnect_cell(leg["disconnect"][v], cfg["never_after_s"]) for v in VARIANTS),
            _num(tp["best_events_per_s"], 0), _num(tp["best_mb_per_s"]),
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    for name, why in report["unavailable"].items():
        lines.append(f"| {name} | not measured: {why.splitlines()[0][:100]} |" + " |" * 7)
    lines += [
        "",
        f"All times in ms. (a) n={cfg['ttfb_requests']} per leg after {cfg['warmup']} warm-up, "
        f"`[sim:long_text tokens={cfg['ttfb_tokens']} pace={cfg['ttfb_pace_ms']:g}]`; "
        f"(b) {cfg['trials']} trials per leg and variant, pace {cfg['disconnect_pace_ms']:g} ms, "
        f"{cfg['min_read']}-{cfg['max_read']} chunks read, first token after {cfg['first_token_delay_s']:g} s; "
        f"(c) {cfg['throughput_tokens']} chunks unpaced.",
        "before the first token: the close comes right after the response headers, or after "
        f"{cfg['headers_wait_s']:g} s when a leg holds them back; headers seen: "
        + ", ".join(f"{n} {headers_seen(leg)}" for n, leg in legs.items())
        + ". Server CPU per chunk in (c), µs (median): "
        + ", ".join(f"{n} {_num(leg['throughput']['median_server_cpu_us_per_event'])}" for n, leg in legs.items())
        + ".",
        f"targets (runforge): {report['targets']}",
        "",
        *split_table(report),
        "",
        *detail_lines(report),
    ]
    return "\n".join(lines)


SPLIT_PARTS = {
    "to_upstream": "sent → upstream request starts",
    "upstream": "upstream start → its first chunk",
    "from_upstream": "upstream first chunk → here",
    "to_headers": "sent → response headers here",
}


def split_table(report: dict[str, Any]) -> list[str]:
    """(a) split with the simulator's instants (CLOCK_MONOTONIC in both processes), p50 / p99."""
    header = "| (a) split, ms p50 / p99 | " + " | ".join(SPLIT_PARTS.values()) + " |"
    lines = [header, "|---" * (len(SPLIT_PARTS) + 1) + "|"]
    for name, leg in report["legs"].items():
        cells = [f"{_num(s['p50'])} / {_num(s['p99'])}" for s in (leg["ttfb_split_ms"][p] for p in SPLIT_PARTS)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def headers_seen(leg: dict[str, Any]) -> str:
    stats = leg["disconnect"]["before_first_token"]
    return f"{stats['headers_seen']}/{sum(stats['outcomes'].values())}"


def detail_lines(report: dict[str, Any]) -> list[str]:
    lines = []
    for name, leg in report["legs"].items():
        tp = leg["throughput"]
        runs = ", ".join(f"{r['events']} ev/{r['bytes']} B in {r['seconds']} s" for r in tp["runs"])
        lines.append(
            f"{name}: TTFB {leg['ttfb_ms']} errors {leg['ttfb_errors']} connections {leg['ttfb_connections_opened']}"
        )
        lines += [f"  TTFB part {part}: {stats}" for part, stats in leg["ttfb_split_ms"].items()]
        for variant, stats in leg["disconnect"].items():
            lines.append(
                f"  {variant}: {stats['latency_ms']} outcomes {stats['outcomes']} headers_seen {stats['headers_seen']} "
                f"upstream_started_after_close {stats['upstream_started_after_close']}"
                + (" (stopped early)" if stats["stopped_early"] else "")
                + (f" errors {stats['errors']}" if stats["errors"] else "")
            )
        lines.append(f"  throughput runs: {runs}" + (f" errors {tp['errors']}" if tp["errors"] else ""))
    lines.append(f"CPU cores used per phase: {report['cpu_cores_by_phase']}")
    return lines


def disconnect_cell(stats: dict[str, Any], never_after: float) -> str:
    outcomes, lat = stats["outcomes"], stats["latency_ms"]
    total = sum(outcomes.values())
    unseen = sum(n for outcome, n in outcomes.items() if outcome in ("never", "completed"))
    if total and unseen == total:
        return f"never (>{never_after:g} s), {unseen}/{total}"
    cell = f"{_num(lat['p50'])} / {_num(lat['p99'])} / {_num(lat['max'])}" if lat["n"] else "—"
    extra = [f"{n}/{total} {outcome}" for outcome, n in outcomes.items() if outcome != "closed"]
    return cell + (f" ({', '.join(extra)})" if extra else "")


def _num(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def _signed(value: float | None) -> str:
    return "—" if value is None else f"{value:+.2f}"


def save(report: dict[str, Any], outcome: Outcome) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = RESULTS_DIR / f"proxy_compare-{stamp}{'-quick' if report['config']['quick'] else ''}.json"
    raw = {
        "ttfb_samples_ms": {name: [round(v * 1000, 3) for v in leg.samples] for name, leg in outcome.ttfb.items()},
        "disconnect_trials": {
            variant: {name: [asdict(t) for t in leg.trials] for name, leg in by_leg.items()}
            for variant, by_leg in outcome.disconnect.items()
        },
    }
    path.write_text(json.dumps(report | {"raw": raw}, indent=1) + "\n")
    return path


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    args = sys.argv[1:] if argv is None else list(argv)
    command = shlex.join([os.path.relpath(sys.executable, REPO), "bench/proxy_compare.py", *args])
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(SIGTERM_EXIT))
    machine = machine_info()
    work = Path(tempfile.mkdtemp(prefix="runforge-proxy-bench-"))
    children: list[Child] = []
    try:
        stack = start_stack(cfg, work, children)
        with asyncio.Runner(loop_factory=loop_factory(cfg.asyncio_loop)) as runner:
            outcome = runner.run(stoppable(asyncio.wait_for(benchmark(cfg, stack), cfg.timeout)))
    except TimeoutError:
        print(f"proxy_compare: did not finish within --timeout {cfg.timeout:g} s", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print("proxy_compare: terminated", file=sys.stderr)
        return SIGTERM_EXIT
    finally:
        stop_all(children)
        if cfg.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    report = build_report(cfg, stack, outcome, machine, command)
    print(render(report))
    print(f"saved {save(report, outcome).relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
