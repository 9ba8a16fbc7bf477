#!/usr/bin/env python3
"""Preset benchmark: time to the ``template`` event over real sockets, and template match time.

Two measurements:

(a) **gen request -> template copied.** Starts ``runforge serve`` as a subprocess (temp data
    dir, port 0, embedded simulator, ``RUNFORGE_BUILD=0`` so no npm build dominates), creates a
    user with ``runforge user add``, then runs N generations one after another. Each run gets a
    fresh app of the preset's type (``vue_project`` for company/portfolio, ``multi_file`` for
    landing) and sends one of the preset's trigger prompts with ``POST /app/chat/gen/code``. From
    the instant the request is sent we take: the response headers, the ``run`` event, the
    ``template`` event (which must say ``copied: true`` for the expected preset) and ``done``.
    Each run finishes before the next starts.
(b) **match time for 1,000 prompts.** A seeded list (exact triggers, case/punctuation and
    full-width variants, typos, English and Chinese keyword prompts, off-topic prompts up to
    ~2,000 characters) matched in-process with ``match_prompt`` against the real catalog: total
    for the 1,000 (best of 5 rounds), per-prompt percentiles, and the outcomes by method.

    .venv/bin/python bench/codegen.py                 # N=50 runs, 1,000 prompts x 5 rounds
    .venv/bin/python bench/codegen.py --quick         # smoke run: 6 runs, 2 rounds

Loopback only; bounded by --timeout; the server subprocess is killed on any exit.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # `python bench/codegen.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO))

from app.checkpoints import Checkpoints  # noqa: E402
from app.control.cancel import StopGate  # noqa: E402
from app.presets import Catalog, Matcher, Preset, copy_preset, load_catalog, match_prompt, normalise  # noqa: E402
from app.settings import DEFAULT_TEMPLATES_DIR  # noqa: E402

RESULTS_DIR = REPO / "bench" / "results"
STARTUP_TIMEOUT_S = 20.0
READ_TIMEOUT_S = 60.0  # a run that sends nothing for this long (or never closes its stream) fails
TERMINAL = frozenset({"done", "interrupted", "failed"})
SIGTERM_EXIT = 143
# CPU used by processes other than ours above which a phase is flagged as not on an idle machine.
OTHERS_WARN_CORES = 0.1
PERCENTILES = (50, 90, 99, 100)


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class Config:
    runs: int
    warmup: int
    pace_ms: float
    method: str
    prompts: int
    rounds: int
    seed: int
    timeout: float
    keep: bool
    quick: bool
    skip_server: bool
    skip_match: bool


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0] if __doc__ else None,
        epilog="Results: a table on stdout and JSON in bench/results/ (git-ignored).",
    )
    p.add_argument("--runs", type=int, default=None, help="measured runs in (a) (default 50; --quick 6)")
    p.add_argument("--warmup", type=int, default=None, help="unmeasured runs first, one per preset (default 3)")
    p.add_argument("--pace-ms", type=float, default=2.0, help="simulator ms per token (default 2); (a) only")
    p.add_argument("--method", choices=("post", "get"), default="post", help="how (a) starts a run (default post)")
    p.add_argument("--prompts", type=int, default=1000, help="prompts in (b) (default 1000)")
    p.add_argument("--rounds", type=int, default=None, help="rounds over the prompts in (b) (default 5; --quick 2)")
    p.add_argument("--seed", type=int, default=1, help="seed of the prompt list (default 1)")
    p.add_argument("--timeout", type=float, default=600.0, help="time limit for (a), s (default 600)")
    p.add_argument("--keep", action="store_true", help="keep the temp data dir and the server log")
    p.add_argument("--quick", action="store_true", help="smoke run: 6 runs, no warm-up, 2 rounds")
    p.add_argument("--skip-server", action="store_true", help="only (b): start no server")
    p.add_argument("--skip-match", action="store_true", help="only (a)")
    a = p.parse_args(argv)
    runs = a.runs if a.runs is not None else 6 if a.quick else 50
    warmup = a.warmup if a.warmup is not None else 0 if a.quick else 3
    rounds = a.rounds if a.rounds is not None else 2 if a.quick else 5
    if runs < 1 or warmup < 0 or a.pace_ms < 0 or a.prompts < 1 or rounds < 1 or a.timeout <= 0:
        p.error("need --runs >= 1, --warmup >= 0, --pace-ms >= 0, --prompts >= 1, --rounds >= 1, --timeout > 0")
    if a.skip_server and a.skip_match:
        p.error("--skip-server and --skip-match leave nothing to measure")
    return Config(
        runs, warmup, a.pace_ms, a.method, a.prompts, rounds, a.seed, a.timeout, a.keep, a.quick, a.skip_server,
        a.skip_match,
    )  # fmt: skip


# --------------------------------------------------------------------------- statistics


def percentiles(values: Sequence[float], scale: float = 1000.0, digits: int = 2) -> dict[str, float | int | None]:
    """Nearest-rank p50/p90/p99/max and the mean; seconds in, milliseconds out by default."""
    if not values:
        return {"n": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    ordered = sorted(values)

    def rank(p: float) -> float:
        return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)] * scale, digits)

    stats: dict[str, float | int | None] = {"n": len(ordered)}
    stats.update({("max" if p == 100 else f"p{p}"): rank(p) for p in PERCENTILES})
    stats["mean"] = round(statistics.fmean(ordered) * scale, digits)
    return stats


# --------------------------------------------------------------------------- CPU accounting


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of its reaped children (the server's git runs), from /proc
    (fields 14-17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU time spent by everything on the machine (all CPUs), from the first line of /proc/stat."""
    jiffies = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    return (sum(jiffies[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_sample(pids: dict[str, int]) -> dict[str, float]:
    sample = {name: cpu_seconds(pid) for name, pid in pids.items()}
    sample["machine"] = machine_busy_seconds()
    return sample


def cores_used(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    """Average cores per process over a phase, and ``others``: everything on the machine but us."""
    cores = {name: (after[name] - before[name]) / seconds for name in after}
    cores["others"] = cores["machine"] - sum(v for name, v in cores.items() if name != "machine")
    return {name: round(v, 3) for name, v in cores.items()}


# --------------------------------------------------------------------------- (a) the server


def clean_env() -> dict[str, str]:
    # Nothing from the caller's environment may point the server at a real provider.
    return {k: v for k, v in os.environ.items() if not k.startswith(("RUNFORGE_", "OPENAI_"))}


def server_env(cfg: Config, data_dir: Path) -> dict[str, str]:
    return clean_env() | {
        "RUNFORGE_DATA_DIR": str(data_dir),
        "RUNFORGE_HOST": "127.0.0.1",
        "RUNFORGE_PORT": "0",
        "RUNFORGE_BUILD": "0",  # an npm build would dominate `done` and says nothing about presets
        "RUNFORGE_SIM_PACE_MS": f"{cfg.pace_ms:g}",  # the embedded simulator (no RUNFORGE_LLM_BASE_URL)
        # One user starts every run: the per-user limits (app/limits.py) are not measured here.
        "RUNFORGE_MAX_RUNS_PER_USER": "0",
        "RUNFORGE_GEN_PER_MINUTE": "0",
        "RUNFORGE_STOPS_PER_MINUTE": "0",
    }


def add_user(env: dict[str, str]) -> str:
    """``runforge user add bench``: the token is its last line of output."""
    argv = [sys.executable, "-m", "app", "user", "add", "bench"]
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=STARTUP_TIMEOUT_S)
    if done.returncode != 0:
        raise RuntimeError(f"runforge user add failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return done.stdout.strip().splitlines()[-1].strip()


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log: Path
    url: str = ""

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def start_server(env: dict[str, str], log: Path, servers: list[Server]) -> Server:
    argv = [sys.executable, "-m", "app", "serve", "--no-access-log"]
    # Output goes to a file, not a pipe: nobody has to drain it while the benchmark runs. A new
    # session keeps a terminal's Ctrl-C from reaching the server before our cleanup.
    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    server = Server(proc, log)
    servers.append(server)  # at once: a signal during start-up must still find it to stop it
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        match = re.search(r"Runforge listening on (http://127\.0\.0\.1:\d+)", log.read_text(errors="replace"))
        if match:
            server.url = match[1]
            return server
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    tail = log.read_text(errors="replace")[-2000:]
    raise RuntimeError(f"server did not start (exit code {proc.poll()}):\n{tail}")


def wait_until_up(http: httpx.Client) -> None:
    # The banner is printed before uvicorn accepts connections (they queue): retry /healthz.
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while True:
        try:
            if http.get("/healthz").status_code == 200:
                return
        except httpx.TransportError:
            if time.monotonic() > deadline:
                raise
        time.sleep(0.05)


# --------------------------------------------------------------------------- (a) the runs


@dataclass(frozen=True)
class RunSpec:
    index: int
    run_id: str
    preset: str
    app_type: str
    prompt: str
    warmup: bool


def plan_runs(cfg: Config, catalog: Catalog) -> list[RunSpec]:
    """Round-robin over the presets (so app types alternate), cycling through each one's triggers."""
    # The app gets the preset's type: a run only considers presets of its app's type (Catalog.for_type).
    presets = list(catalog.presets)
    specs: list[RunSpec] = []
    for i in range(cfg.warmup + cfg.runs):
        preset = presets[i % len(presets)]
        trigger = preset.triggers[(i // len(presets)) % len(preset.triggers)]
        warm = i < cfg.warmup
        run_id = f"bench-{'w' if warm else 'm'}{i:04d}"
        specs.append(RunSpec(i, run_id, preset.name, preset.code_gen_type, trigger, warm))
    return specs


@dataclass
class RunResult:
    run_id: str
    preset: str
    app_type: str
    prompt: str
    warmup: bool
    app_id: str = ""
    status_code: int | None = None
    error: str | None = None
    new_connections: int = 0  # TCP connects during the gen request (0: a kept-alive connection)
    # Seconds from the instant the gen request was sent.
    headers_s: float | None = None
    run_s: float | None = None
    template_s: float | None = None
    first_text_s: float | None = None
    terminal_s: float | None = None
    closed_s: float | None = None
    template: dict[str, Any] | None = None
    terminal: str | None = None
    terminal_data: dict[str, Any] | None = None
    events: Counter[str] = field(default_factory=Counter)
    events_before_template: list[str] = field(default_factory=list)
    events_after_terminal: int = 0
    missing_files: list[str] = field(default_factory=list)  # preset files not in the workspace after the run

    @property
    def template_ok(self) -> bool:
        t = self.template or {}
        return t.get("copied") is True and t.get("name") == self.preset

    def failures(self) -> list[str]:
        problems = []
        if self.error:
            problems.append(self.error)
        if self.status_code != 200:
            problems.append(f"HTTP {self.status_code}")
        if not self.template_ok:
            problems.append(f"template event {self.template!r}, expected {self.preset} copied")
        if self.terminal != "done":
            problems.append(f"terminal {self.terminal!r}: {self.terminal_data!r}")
        if self.events_after_terminal:
            problems.append(f"{self.events_after_terminal} event(s) after the terminal event")
        if self.missing_files:
            problems.append(f"workspace lacks {self.missing_files[:5]}")
        return problems


def sse_events(lines: Iterator[str]) -> Iterator[tuple[str, str]]:
    """(event name, data) per SSE frame; comments (pings) are skipped, unnamed events are ``message``."""
    name, data = "", list[str]()
    for line in lines:
        if not line:
            if data:
                yield name or "message", "\n".join(data)
            name, data = "", []
        elif line.startswith(":"):
            continue
        else:
            key, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if key == "event":
                name = value
            elif key == "data":
                data.append(value)


def drive_run(
    http: httpx.Client, cfg: Config, spec: RunSpec, workspaces: Path, presets: dict[str, Preset]
) -> RunResult:
    result = RunResult(spec.run_id, spec.preset, spec.app_type, spec.prompt, spec.warmup)
    created = http.post("/apps", json={"name": f"bench {spec.index}", "codeGenType": spec.app_type})
    created.raise_for_status()
    result.app_id = str(created.json()["id"])

    def trace(event: str, _: dict[str, Any]) -> None:
        if event == "connection.connect_tcp.complete":
            result.new_connections += 1

    body = {"appId": result.app_id, "message": spec.prompt, "runId": spec.run_id}
    if cfg.method == "post":
        request = http.build_request("POST", "/app/chat/gen/code", json=body, extensions={"trace": trace})
    else:
        request = http.build_request("GET", "/app/chat/gen/code", params=body, extensions={"trace": trace})
    sent = time.perf_counter()
    response = http.send(request, stream=True)
    try:
        result.headers_s = time.perf_counter() - sent
        result.status_code = response.status_code
        if response.status_code != 200:
            result.error = f"HTTP {response.status_code}: {response.read()[:200]!r}"
            return result
        read_events(response, result, sent)
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        response.close()
    result.missing_files = missing_preset_files(presets[spec.preset], workspaces / result.app_id)
    return result


def read_events(response: httpx.Response, result: RunResult, sent: float) -> None:
    for kind, data in sse_events(response.iter_lines()):
        at = time.perf_counter() - sent
        result.events[kind] += 1
        if result.terminal is not None:
            result.events_after_terminal += 1  # a failure: the server must close the stream instead
            continue
        if kind == "run" and result.run_s is None:
            result.run_s = at
        elif kind == "template" and result.template is None:
            result.template_s, result.template = at, json.loads(data)
        elif kind == "message" and result.first_text_s is None:
            result.first_text_s = at
        elif kind in TERMINAL:
            result.terminal_s, result.terminal, result.terminal_data = at, kind, json.loads(data)
        if result.template is None:
            result.events_before_template.append(kind)
    result.closed_s = time.perf_counter() - sent


def missing_preset_files(preset: Preset, workspace: Path) -> list[str]:
    """Preset files that are not in the workspace (a multi_file run rewrites some: they must exist)."""
    root = preset.project_dir
    expected = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    return sorted(name for name in expected if not (workspace / name).is_file())


@dataclass
class ServerOutcome:
    results: list[RunResult]
    seconds: float
    server_url: str
    steps: dict[str, Any]  # bench_steps
    cpu: dict[str, float]  # cores used during the runs, per process


def bench_server(cfg: Config, catalog: Catalog, work: Path, servers: list[Server]) -> ServerOutcome:
    data_dir = work / "data"
    env = server_env(cfg, data_dir)
    token = add_user(env)
    server = start_server(env, work / "server.log", servers)
    specs = plan_runs(cfg, catalog)
    presets = {p.name: p for p in catalog.presets}
    # One kept-alive connection for everything: the app is created on the connection the gen
    # request then uses, so no run pays a TCP handshake (new_connections says if one did).
    limits = httpx.Limits(max_connections=1, max_keepalive_connections=1)
    timeout = httpx.Timeout(30.0, read=READ_TIMEOUT_S)
    headers = {"Authorization": f"Bearer {token}"}
    results: list[RunResult] = []
    pids = {"server": server.proc.pid, "client": os.getpid()}
    with httpx.Client(base_url=server.url, headers=headers, timeout=timeout, limits=limits, trust_env=False) as http:
        wait_until_up(http)
        cpu_before = cpu_sample(pids)
        started = time.monotonic()
        for spec in specs:
            if time.monotonic() - started > cfg.timeout:
                raise TimeoutError
            results.append(drive_run(http, cfg, spec, data_dir / "workspaces", presets))
    seconds = time.monotonic() - started
    cpu = cores_used(cpu_before, cpu_sample(pids), seconds)
    server.stop()  # the in-process steps below get the machine to themselves
    steps = bench_steps(catalog, work, max(3, cfg.runs // len(catalog.presets)))
    return ServerOutcome(results, seconds, server.url, steps, cpu)


def bench_steps(catalog: Catalog, work: Path, repeats: int) -> dict[str, Any]:
    """In-process, what a run does between its `run` and `template` events, step by step: the
    checkpoint of the (empty) workspace, then match + copy. Same filesystem as the server's data dir."""
    checkpoints = Checkpoints(work / "steps" / "checkpoints")
    timings: dict[str, dict[str, list[float]]] = {}
    for preset in catalog.presets:
        legs: dict[str, list[float]] = {"checkpoint_base": [], "match": [], "copy_preset": []}
        for i in range(repeats):
            app_id = f"{preset.name}-{i}"
            workspace = work / "steps" / "workspaces" / app_id
            workspace.mkdir(parents=True)
            t0 = time.perf_counter()
            checkpoints.base(app_id, workspace, f"steps-{app_id}")
            t1 = time.perf_counter()
            match = match_prompt(preset.triggers[i % len(preset.triggers)], catalog.for_type(preset.code_gen_type))
            t2 = time.perf_counter()
            if match.preset != preset or not copy_preset(preset, workspace, StopGate()):
                raise RuntimeError(f"preset {preset.name} was not matched and copied in-process")
            t3 = time.perf_counter()
            for leg, seconds in zip(legs, (t1 - t0, t2 - t1, t3 - t2), strict=True):
                legs[leg].append(seconds)
        files = sum(1 for p in preset.project_dir.rglob("*") if p.is_file())
        timings[f"{preset.name} ({files} files)"] = legs
    return {name: {leg: percentiles(values) for leg, values in legs.items()} for name, legs in timings.items()}


def server_report(outcome: ServerOutcome) -> dict[str, Any]:
    measured = [r for r in outcome.results if not r.warmup]
    groups: dict[str, list[RunResult]] = {"all": measured}
    for r in measured:
        groups.setdefault(f"{r.preset} ({r.app_type})", []).append(r)
    legs = ("headers_s", "run_s", "template_s", "first_text_s", "terminal_s", "closed_s")

    def stats(rows: list[RunResult], leg: str) -> dict[str, float | int | None]:
        return percentiles([v for r in rows if (v := getattr(r, leg)) is not None])

    by_group = {name: {leg.removesuffix("_s"): stats(rows, leg) for leg in legs} for name, rows in groups.items()}
    run_to_template = percentiles([r.template_s - r.run_s for r in measured if r.template_s and r.run_s])
    failures = {r.run_id: f for r in outcome.results if (f := r.failures())}
    return {
        "latency_ms": by_group,
        "run_event_to_template_ms": run_to_template,
        "warmup_runs": [
            {"runId": r.run_id, "preset": r.preset, **{leg: _ms(getattr(r, leg)) for leg in legs}}
            for r in outcome.results
            if r.warmup
        ],
        "counts": {
            "runs_measured": len(measured),
            "runs_warmup": len(outcome.results) - len(measured),
            "runs_by_preset": dict(Counter(r.preset for r in measured)),
            "template_methods": dict(Counter(str((r.template or {}).get("method")) for r in measured)),
            "failed_runs": len(failures),
            "runs_with_new_connection": sum(1 for r in measured if r.new_connections),
            "events_before_template": dict(Counter(",".join(r.events_before_template) for r in measured)),
            "terminal_events": dict(Counter(str(r.terminal) for r in outcome.results)),
        },
        "failures": dict(list(failures.items())[:20]),
        "phase_s": round(outcome.seconds, 2),
        "cpu_cores_used": outcome.cpu,
        "in_process_steps_ms": outcome.steps,
    }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1000, 3)


# --------------------------------------------------------------------------- (b) the prompts

# Off-topic material for prompts no preset should take (apps, tools, games, data, prose).
_OFF_TOPIC_EN = (
    "a todo list app with drag and drop reordering and due dates",
    "a snake game on a canvas with a high score table",
    "a weather dashboard that shows the forecast for the next five days",
    "a markdown editor with a live preview pane",
    "a unit converter for length, weight and temperature",
    "a pomodoro timer with a short and a long break",
    "a chess clock for two players with increments",
    "a calculator with keyboard support and a history of results",
    "a kanban board with three columns and local storage",
    "an expense tracker that draws a pie chart per category",
    "a quiz about world capitals with a score at the end",
    "a colour palette generator that copies hex codes on click",
    "a flashcard app for learning vocabulary with spaced repetition",
    "a recipe scaler that multiplies the ingredients for more servings",
    "a tic tac toe game against a simple computer player",
    "a stopwatch with lap times",
    "a password generator with options for symbols and length",
    "an image gallery viewer with keyboard navigation",
    "a habit tracker with a streak counter per habit",
    "a countdown to new year with animated digits",
)
_FILLER_EN = (
    "It should work on phones.",
    "Please keep the code simple.",
    "Use a dark theme.",
    "No external libraries, please.",
    "Add comments where the logic is not obvious.",
    "The buttons should be large enough to tap.",
    "Save the state in local storage so a reload keeps it.",
    "Make it accessible with proper labels.",
    "I want to learn from the code, so keep it readable.",
    "Animations are welcome but keep them subtle.",
)
_OFF_TOPIC_ZH = (
    "做一个待办事项应用，可以拖拽排序",
    "写一个贪吃蛇小游戏，带最高分记录",
    "做一个天气预报面板，显示未来五天",
    "做一个计算器，支持键盘输入",
    "写一个番茄钟，包含短休息和长休息",
    "做一个记账工具，按类别画饼图",
    "做一个单词卡片应用，用来背单词",
    "写一个井字棋游戏，可以和电脑对战",
    "做一个秒表，可以记录每圈时间",
    "做一个密码生成器，可以选择长度和符号",
)
_FILLER_ZH = ("要适配手机。", "代码尽量简单。", "使用深色主题。", "不要使用外部库。", "界面要清爽。")
# On-topic sentence frames for keyword prompts ({kw} and {kw2}: keywords of one preset).
_FRAMES_EN = (
    "I need a {kw} for my small bakery, with {kw2} and opening hours.",
    "Can you put together a {kw} with a {kw2} section?",
    "Looking for a clean {kw}; it should also have {kw2}.",
    "Please create a modern {kw} including {kw2} for our team.",
    "{kw} with {kw2}, responsive, light colours",
    "We are a three-person studio and want a {kw} that shows {kw2}.",
)
_FRAMES_ZH = (
    "请给我做一个{kw}，包含{kw2}，风格简洁大方。",
    "想要一个{kw}，需要有{kw2}部分。",
    "帮我设计{kw}，顺便加上{kw2}。",
    "我们公司需要{kw}和{kw2}，颜色用蓝色。",
    "做个{kw}吧，要有{kw2}",
)
# Category -> share of the prompt list (they add up to 1).
PROMPT_MIX = {
    "exact": 0.10,
    "case_punct": 0.15,
    "full_width": 0.10,
    "typo": 0.15,
    "keywords_en": 0.15,
    "keywords_zh": 0.10,
    "no_hit": 0.25,
}
NO_HIT_MAX_CHARS = 2000


def _is_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


def _full_width(text: str) -> str:
    """ASCII letters, digits and punctuation -> their full-width forms; space -> ideographic space."""
    return "".join(
        "\u3000" if ch == " " else chr(ord(ch) + 0xFEE0) if "!" <= ch <= "~" else ch for ch in text
    )  # fmt: skip


def _case_punct(rng: random.Random, trigger: str) -> str:
    if _is_cjk(trigger):
        text = rng.choice((trigger, f"  {trigger} ", trigger.replace("一个", "一个 ")))
        return text + rng.choice(("！", "。", "?", "!!", "~", "……", " :)", "，谢谢！"))
    case = rng.choice((str.upper, str.lower, str.title, str.swapcase, lambda s: s))
    text = case(trigger)
    if rng.random() < 0.3:  # random case per letter
        text = "".join(ch.upper() if rng.random() < 0.5 else ch.lower() for ch in text)
    if rng.random() < 0.4:
        words = text.split(" ")
        at = rng.randrange(1, len(words))
        words[at - 1] += rng.choice((",", " -", ";", ":"))
        text = " ".join(words)
    if rng.random() < 0.3:
        text = text.replace(" ", rng.choice(("  ", "\t", " \n ")), 2)
    wrap = rng.choice(("{}", '"{}"', "'{}'", "({})", "  {}  ", "{}\n"))
    return wrap.format(text) + rng.choice(("", "!", "?", ".", "!!!", "...", " :)", "!?", " ->"))


def _variant_full_width(rng: random.Random, trigger: str) -> str:
    if _is_cjk(trigger):
        return rng.choice(("\u3000", "")) + trigger + rng.choice(("！", "？", "。", "！！", "\u3000～"))
    text = _full_width(trigger)
    return text + rng.choice(("", "！", "？", "．"))


def _typo(rng: random.Random, trigger: str) -> str:
    """One or two character edits that change the prompt as the matcher sees it (normalised)."""
    while True:
        typo = _edit(rng, trigger)
        if normalise(typo) != normalise(trigger):
            return typo


def _edit(rng: random.Random, trigger: str) -> str:
    chars = list(trigger)
    alphabet = "的了做个一页网站" if _is_cjk(trigger) else "abcdefghijklmnopqrstuvwxyz"
    edits = 1 if _is_cjk(trigger) or rng.random() < 0.6 else 2
    for _ in range(edits):
        at = rng.randrange(len(chars))
        op = rng.choice(("delete", "replace", "insert", "swap"))
        if op == "delete" and len(chars) > 2:
            del chars[at]
        elif op == "replace":
            chars[at] = rng.choice(alphabet)
        elif op == "insert":
            chars.insert(at, rng.choice(alphabet))
        elif at + 1 < len(chars):
            chars[at], chars[at + 1] = chars[at + 1], chars[at]
    return "".join(chars)


def _keyword_prompt(rng: random.Random, preset: Preset, chinese: bool) -> str:
    pool = [kw for kw in preset.keywords if _is_cjk(kw) == chinese] or list(preset.keywords)
    kw, kw2 = rng.sample(pool, 2) if len(pool) > 1 else (pool[0], pool[0])
    frame = rng.choice(_FRAMES_ZH if chinese else _FRAMES_EN)
    text = frame.format(kw=kw, kw2=kw2)
    if rng.random() < 0.3:  # a longer request: on-topic prompt plus unrelated detail
        text += " " + " ".join(rng.sample(_FILLER_ZH if chinese else _FILLER_EN, 2))
    return text


def _no_hit(rng: random.Random) -> str:
    # Lengths spread log-uniformly from ~10 to NO_HIT_MAX_CHARS: most short, some very long.
    target = round(math.exp(rng.uniform(math.log(10), math.log(NO_HIT_MAX_CHARS))))
    chinese = rng.random() < 0.3
    parts: list[str] = []
    while sum(len(p) + 1 for p in parts) < target:
        if chinese:
            parts.append(rng.choice(_OFF_TOPIC_ZH) + rng.choice(("。", "，")) + rng.choice(_FILLER_ZH))
        else:
            parts.append(rng.choice(("Build ", "Make me ", "I want ", "Write ")) + rng.choice(_OFF_TOPIC_EN) + ".")
            parts.append(rng.choice(_FILLER_EN))
    return " ".join(parts)[:target].strip()


def make_prompts(catalog: Catalog, count: int, seed: int) -> list[tuple[str, str]]:
    """(category, prompt) pairs: the same list for the same catalog, count and seed."""
    rng = random.Random(seed)
    presets = list(catalog.presets)
    triggers = [t for p in presets for t in p.triggers]
    sizes = {name: math.floor(share * count) for name, share in PROMPT_MIX.items()}
    sizes["no_hit"] += count - sum(sizes.values())
    makers = {
        "exact": lambda: rng.choice(triggers),
        "case_punct": lambda: _case_punct(rng, rng.choice(triggers)),
        "full_width": lambda: _variant_full_width(rng, rng.choice(triggers)),
        "typo": lambda: _typo(rng, rng.choice(triggers)),
        "keywords_en": lambda: _keyword_prompt(rng, rng.choice(presets), chinese=False),
        "keywords_zh": lambda: _keyword_prompt(rng, rng.choice(presets), chinese=True),
        "no_hit": lambda: _no_hit(rng),
    }
    prompts = [(name, makers[name]()) for name, size in sizes.items() for _ in range(size)]
    rng.shuffle(prompts)  # categories interleaved, as prompts arrive
    return prompts


# --------------------------------------------------------------------------- (b) the matching


def bench_match(cfg: Config, catalog: Catalog) -> dict[str, Any]:
    presets = catalog.presets
    prompts = make_prompts(catalog, cfg.prompts, cfg.seed)
    texts = [p for _, p in prompts]
    # The first call builds (and caches) the Matcher for this preset tuple; timed on its own.
    start = time.perf_counter_ns()
    match_prompt(texts[0], presets)
    first_call_ns = time.perf_counter_ns() - start
    rounds: list[tuple[int, list[int]]] = []
    outcomes: list[tuple[str | None, str]] | None = None
    for _ in range(cfg.rounds):
        gc.collect()
        per_prompt: list[int] = []
        seen: list[tuple[str | None, str]] = []
        round_start = time.perf_counter_ns()
        for text in texts:
            t = time.perf_counter_ns()
            match = match_prompt(text, presets)
            per_prompt.append(time.perf_counter_ns() - t)
            seen.append((match.name, match.method))
        rounds.append((time.perf_counter_ns() - round_start, per_prompt))
        if outcomes is not None and seen != outcomes:
            raise AssertionError("match_prompt gave different answers in two rounds")
        outcomes = seen
    assert outcomes is not None
    best_total, best_per_prompt = min(rounds, key=lambda r: r[0])
    # The same prompts through a prebuilt Matcher: what match_prompt adds (hashing the preset tuple).
    matcher = Matcher(presets)
    direct = []
    for _ in range(cfg.rounds):
        t = time.perf_counter_ns()
        for text in texts:
            matcher.match(text)
        direct.append(time.perf_counter_ns() - t)
    return match_report(prompts, outcomes, best_total, best_per_prompt, [r[0] for r in rounds], direct, first_call_ns)


def match_report(
    prompts: list[tuple[str, str]],
    outcomes: list[tuple[str | None, str]],
    best_total_ns: int,
    per_prompt_ns: list[int],
    round_totals_ns: list[int],
    direct_totals_ns: list[int],
    first_call_ns: int,
) -> dict[str, Any]:
    us = [ns / 1000 for ns in per_prompt_ns]
    texts = [p for _, p in prompts]
    categories: dict[str, dict[str, Any]] = {}
    for name in PROMPT_MIX:
        rows = [i for i, (category, _) in enumerate(prompts) if category == name]
        lengths = [len(prompts[i][1]) for i in rows]
        categories[name] = {
            "n": len(rows),
            "chars": {"min": min(lengths, default=0), "max": max(lengths, default=0)},
            "methods": dict(Counter(outcomes[i][1] for i in rows)),
            "presets": dict(Counter(str(outcomes[i][0]) for i in rows)),
            "time_us": percentiles([us[i] for i in rows], scale=1.0, digits=1),
        }
    slowest = max(range(len(us)), key=us.__getitem__)
    hits = sum(1 for name, _ in outcomes if name is not None)
    return {
        "prompts": len(prompts),
        "rounds": len(round_totals_ns),
        "total_ms_best": round(best_total_ns / 1e6, 3),
        "total_ms_rounds": [round(ns / 1e6, 3) for ns in round_totals_ns],
        "per_prompt_us": percentiles(us, scale=1.0, digits=1),
        "first_call_us": round(first_call_ns / 1000, 1),
        "prebuilt_matcher_total_ms_best": round(min(direct_totals_ns) / 1e6, 3),
        "hits": hits,
        "no_hits": len(outcomes) - hits,
        "methods": dict(Counter(method for _, method in outcomes)),
        "presets": dict(Counter(str(name) for name, _ in outcomes)),
        "by_category": categories,
        "slowest_prompt": {
            "category": prompts[slowest][0],
            "chars": len(prompts[slowest][1]),
            "method": outcomes[slowest][1],
            "us": round(us[slowest], 1),
        },
        "prompt_chars": {"min": min(map(len, texts)), "max": max(map(len, texts))},
    }


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
        "cpu_count": os.cpu_count(),
        "cpu_model": cpu_model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "git_commit": _git("rev-parse", "HEAD"),
        # Others edit the tree while benchmarks run: name what differed from the commit.
        "git_changes": _git("status", "--porcelain").splitlines()[:30],
        "loadavg_before": [round(v, 2) for v in os.getloadavg()],
    }


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def render(report: dict[str, Any]) -> str:
    cfg, machine = report["config"], report["machine"]
    lines = [
        f"Runforge preset benchmark (bench/codegen.py{' --quick' if cfg['quick'] else ''})",
        f"machine: {machine['nproc']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"commit {machine['git_commit'][:12]}"
        + (f" + {len(machine['git_changes'])} uncommitted change(s)" if machine["git_changes"] else "")
        + f"; load average before {machine['loadavg_before']}",
    ]
    if "server" in report:
        lines += ["", *render_server(cfg, report["server"])]
    if "match" in report:
        lines += ["", *render_match(report["match"])]
    return "\n".join(lines)


def _row(label: str, stats: dict[str, Any], width: int = 38) -> str:
    cells = "".join(f"{'-' if stats[k] is None else stats[k]:>10}" for k in ("p50", "p90", "p99", "max", "mean"))
    return f"{label:<{width}}{stats['n']:>5}{cells}"


def _header(title: str, width: int = 38) -> str:
    return f"{title:<{width}}{'n':>5}" + "".join(f"{k:>10}" for k in ("p50", "p90", "p99", "max", "mean"))


def render_server(cfg: dict[str, Any], server: dict[str, Any]) -> list[str]:
    counts = server["counts"]
    lines = [
        f"(a) gen request -> events, ms: {counts['runs_measured']} sequential runs "
        f"({cfg['warmup']} warm-up runs not counted), {cfg['method'].upper()} /app/chat/gen/code, "
        f"fresh app per run, RUNFORGE_BUILD=0, embedded simulator at {cfg['pace_ms']:g} ms/token",
        _header("from sending the request to"),
    ]
    labels = {
        "headers": "response headers",
        "run": "`run` event",
        "template": "`template` event (copied: true)",
        "first_text": "first text token",
        "terminal": "`done`",
        "closed": "stream closed by the server",
    }
    for group, legs in server["latency_ms"].items():
        lines.append(f"  {group}")
        lines += [_row(f"    {labels[leg]}", stats) for leg, stats in legs.items()]
    lines.append(_row("  all: `run` -> `template`", server["run_event_to_template_ms"]))
    for warm in server["warmup_runs"]:
        lines.append(f"  warm-up {warm['runId']} ({warm['preset']}): template {warm['template_s']} ms, done "
                     f"{warm['terminal_s']} ms")  # fmt: skip
    lines.append(
        f"  template methods {counts['template_methods']}; runs with a new TCP connection "
        f"{counts['runs_with_new_connection']}; events before `template` {counts['events_before_template']}"
    )
    lines.append(f"  failed runs: {counts['failed_runs']}" + ("   <-- FAIL" if counts["failed_runs"] else ""))
    cpu = server["cpu_cores_used"]
    lines.append(f"  runs phase {server['phase_s']} s; CPU cores used (avg): {cpu}")
    if cpu.get("others", 0.0) >= OTHERS_WARN_CORES:
        lines.append(f"  WARNING: other processes used {cpu['others']} cores during the runs: not an idle machine")
    lines.append(_header("  in-process, `run` -> `template` steps"))
    for name, legs in server["in_process_steps_ms"].items():
        lines.append(f"  {name}")
        lines += [_row(f"    {leg.replace('_', ' ')}", stats) for leg, stats in legs.items()]
    lines += [f"    {run_id}: {'; '.join(problems)}" for run_id, problems in server["failures"].items()]
    return lines


def render_match(match: dict[str, Any]) -> list[str]:
    per = match["per_prompt_us"]
    lines = [
        f"(b) match_prompt over {match['prompts']} prompts against the real catalog, in-process, "
        f"best of {match['rounds']} rounds",
        f"  total for {match['prompts']}: {match['total_ms_best']} ms (rounds: {match['total_ms_rounds']}); "
        f"prebuilt Matcher.match: {match['prebuilt_matcher_total_ms_best']} ms; first call (builds the "
        f"Matcher): {match['first_call_us']} us",
        _header("per prompt, us (best round)", 28) + "    chars",
        _row("  all", per, 28) + f"    {match['prompt_chars']['min']}-{match['prompt_chars']['max']}",
    ]
    for name, cat in match["by_category"].items():
        lines.append(_row(f"  {name}", cat["time_us"], 28) + f"    {cat['chars']['min']}-{cat['chars']['max']}")
    lines += [
        f"  hits {match['hits']}, no hits {match['no_hits']}; by method {match['methods']}",
        f"  by preset {match['presets']}",
        "  outcomes by category (method counts | preset counts):",
    ]
    for name, cat in match["by_category"].items():
        lines.append(f"    {name:<12}{cat['methods']!s:<46}{cat['presets']}")
    slow = match["slowest_prompt"]
    lines.append(f"  slowest prompt: {slow['us']} us ({slow['category']}, {slow['chars']} chars, {slow['method']})")
    return lines


def save(report: dict[str, Any], details: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    suffix = "-quick" if report["config"]["quick"] else ""
    path = RESULTS_DIR / f"codegen-{stamp}-n{report['config']['runs']}{suffix}.json"
    path.write_text(json.dumps(report | details, indent=1, ensure_ascii=False) + "\n")
    return path


# --------------------------------------------------------------------------- main


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    # SIGTERM unwinds like Ctrl-C, through the finally below that stops the server.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(SIGTERM_EXIT))
    machine = machine_info()
    catalog = load_catalog(DEFAULT_TEMPLATES_DIR)
    if catalog.errors or not catalog.presets:
        print(f"codegen bench: the catalog has problems: {list(catalog.errors) or 'no presets'}", file=sys.stderr)
        return 2
    report: dict[str, Any] = {
        "benchmark": "codegen",
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "config": asdict(cfg),
        "machine": machine,
        "catalog": {p.name: {"codeGenType": p.code_gen_type, "triggers": list(p.triggers)} for p in catalog.presets},
    }
    details: dict[str, Any] = {}
    if not cfg.skip_server:
        work = Path(tempfile.mkdtemp(prefix="runforge-bench-codegen-"))
        servers: list[Server] = []
        try:
            outcome = bench_server(cfg, catalog, work, servers)
        except TimeoutError:
            print(f"codegen bench: (a) did not finish within --timeout {cfg.timeout:g} s", file=sys.stderr)
            return 2
        finally:
            for server in servers:
                server.stop()
            if cfg.keep:
                print(f"kept {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
        report["server"] = server_report(outcome)
        details["runs"] = [asdict(r) | {"events": dict(r.events)} for r in outcome.results]
    if not cfg.skip_match:
        report["match"] = bench_match(cfg, catalog)
        details["prompts"] = [
            {"category": c, "chars": len(p), "prompt": p if len(p) <= 200 else p[:200] + "…"}
            for c, p in make_prompts(catalog, cfg.prompts, cfg.seed)
        ]
    print(render(report))
    print(f"saved {save(report, details).relative_to(REPO)}")
    failed = report.get("server", {}).get("counts", {}).get("failed_runs", 0)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
