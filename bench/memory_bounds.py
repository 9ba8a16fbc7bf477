#!/usr/bin/env python3
"""Memory bounds: the RSS of one ``runforge serve`` under stalled readers and big finished runs.

One server (SQLite, the embedded simulator, builds off) and this client:

1. **Stalled readers.** One run of ``--big-tokens`` tokens read to its end (a ~15 MB SSE stream,
   kept in memory for rejoins), its size checked by one normal rejoin. Then ``--stalled`` raw
   sockets (SO_RCVBUF 16 KiB) send ``GET /runs/big/events``, read the status line and never read
   again. RSS is sampled every ``--sample-s`` for ``--watch-s`` s; the server's send timeout (30 s)
   must drop every such connection (its side leaves /proc/net/tcp) and give the memory back.
2. **Retained runs bounded by size.** ``--runs`` runs of ``[sim:long_text pace=0 tokens=2000]``
   (an app each), then the retained-runs gauge of ``GET /metrics``; then one run of
   ``--huge-tokens`` tokens read to its end: peak RSS during it and RSS after (a live log is capped
   at 64 MiB, a finished run over 16 MiB is not kept).

    .venv/bin/python bench/memory_bounds.py
    .venv/bin/python bench/memory_bounds.py --stalled 4 --watch-s 40 --runs 10 --huge-tokens 500000

Loopback only; bounded by --timeout; the server is stopped on any exit. Writes
bench/results/memory_bounds-<stamp>.json (with the RSS samples).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO / "bench" / "results"
LOCAL_TOKEN_FILE = "local-token"  # Settings.local_token_file: the `local` user's login token
STARTUP_TIMEOUT_S = 30.0
SETTLE_S = 2.0  # after a phase, before its "after" RSS
STALLED_LOG = "reader stopped reading"  # app/api/sse.py STALLED: one line per dropped reader
TCP_STATES = {"01": "ESTABLISHED", "04": "FIN_WAIT1", "05": "FIN_WAIT2", "06": "TIME_WAIT", "08": "CLOSE_WAIT"}
FINAL = ("completed", "interrupted", "failed")


@dataclass(frozen=True)
class Config:
    big_tokens: int
    stalled: int
    watch_s: float
    sample_s: float
    runs: int
    run_tokens: int
    huge_tokens: int
    timeout: float
    retain_mb: int | None
    keep: bool


def parse_args(argv: Sequence[str] | None) -> Config:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--big-tokens", type=int, default=250_000, help="tokens of the run rejoined (default 250000)")
    p.add_argument("--stalled", type=int, default=10, help="stalled rejoins (default 10)")
    p.add_argument("--watch-s", type=float, default=45.0, help="how long RSS is watched after them (default 45)")
    p.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling interval, s (default 0.5)")
    p.add_argument("--runs", type=int, default=60, help="small runs to be retained (default 60)")
    p.add_argument("--run-tokens", type=int, default=2000, help="tokens of each small run (default 2000)")
    p.add_argument("--huge-tokens", type=int, default=2_000_000, help="tokens of the huge run (default 2000000)")
    p.add_argument("--timeout", type=float, default=900.0, help="global time limit, s (default 900)")
    p.add_argument(
        "--retain-mb", type=int, default=None, help="the server's per-run retention cap (default: its own, 16 MiB)"
    )
    p.add_argument("--keep", action="store_true", help="keep the temp data dir and the server log")
    return Config(**vars(p.parse_args(argv)))


# --------------------------------------------------------------------------- the server


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    log: Path
    port: int
    token: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_server(work: Path, retain_mb: int | None) -> Iterator[Server]:
    """`runforge serve` on a free port; its token is the one it writes in its data dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNFORGE_", "OPENAI_"))} | {
        "RUNFORGE_DATA_DIR": str(work / "data"), "RUNFORGE_HOST": "127.0.0.1", "RUNFORGE_PORT": str(free_port()),
        "RUNFORGE_GEN_PER_MINUTE": "0", "RUNFORGE_STOPS_PER_MINUTE": "0", "RUNFORGE_MAX_RUNS_PER_USER": "0",
        "RUNFORGE_BUILD": "0",
    } | ({"RUNFORGE_MAX_RETAINED_RUN_BYTES": str(retain_mb << 20)} if retain_mb else {})  # fmt: skip
    argv, log = [sys.executable, "-m", "app", "serve", "--no-access-log"], work / "server.log"
    with log.open("wb") as out:  # a file, not a pipe: nobody has to drain it; a new session: no Ctrl-C
        proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=out, start_new_session=True)
    server = Server(proc, log, int(env["RUNFORGE_PORT"]))
    try:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        with httpx.Client(base_url=f"http://127.0.0.1:{server.port}", trust_env=False, timeout=2.0) as http:
            while not server.token:
                if proc.poll() is not None or time.monotonic() > deadline:
                    tail = log.read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"server did not start (exit code {proc.poll()}):\n{tail}")
                with suppress(httpx.TransportError, FileNotFoundError):
                    if http.get("/healthz").status_code == 200:
                        server.token = (work / "data" / LOCAL_TOKEN_FILE).read_text().strip()
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no VmRSS for pid {pid}")


class Sampler(threading.Thread):
    """RSS every ``interval`` s, as (s since start, MiB), until finished."""

    def __init__(self, pid: int, interval: float) -> None:
        super().__init__(daemon=True)
        self.pid, self.interval, self.t0 = pid, interval, time.monotonic()
        self.samples: list[tuple[float, float]] = []
        self._done = threading.Event()
        self.start()

    def run(self) -> None:
        while not self._done.is_set():
            self.samples.append((round(time.monotonic() - self.t0, 2), rss_mib(self.pid)))
            self._done.wait(self.interval)

    def finish(self) -> float:
        """Stop; the peak in MiB."""
        self._done.set()
        self.join()
        return max(m for _, m in self.samples)


def tcp_states(server_port: int) -> dict[int, tuple[str, int]]:
    """The server's side of each connection to it: client port -> (TCP state, bytes in its send queue)."""
    states: dict[int, tuple[str, int]] = {}
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(name).read_text().splitlines()[1:]:
            _, local, remote, state, queues, *_ = line.split()
            if int(local.rsplit(":", 1)[1], 16) == server_port and state != "0A":  # 0A: LISTEN
                states[int(remote.rsplit(":", 1)[1], 16)] = (TCP_STATES.get(state, state), int(queues[:8], 16))
    return states


# --------------------------------------------------------------------------- the client


def stream(http: httpx.Client, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
    """GET an SSE stream and read it to its end: its body's bytes, its last event, its time."""
    t0, size, tail = time.monotonic(), 0, b""
    with http.stream("GET", path, params=params) as response:
        for chunk in response.iter_raw(64 * 1024):
            size, tail = size + len(chunk), (tail + chunk)[-4096:]
    events = re.findall(rb"^event: ?(\w+)", tail, re.MULTILINE)
    last, seconds = events[-1].decode() if events else None, round(time.monotonic() - t0, 2)
    return {"status": response.status_code, "bytes": size, "mb": round(size / 1e6, 2), "last": last, "s": seconds}


def generate(http: httpx.Client, run_id: str, directive: str) -> dict[str, Any]:
    """A run on a new app, read to its end by this client; then its record."""
    created = http.post("/apps", json={"name": "m", "codeGenType": "html"})
    created.raise_for_status()
    params = {"appId": created.json()["id"], "message": f"essay [sim:{directive}]", "runId": run_id}
    seen = stream(http, "/app/chat/gen/code", params | {"onDisconnect": "continue"})
    deadline, view = time.monotonic() + 60, dict[str, Any]()
    while time.monotonic() < deadline and not (view.get("status") in FINAL and not view.get("live")):
        view = http.get(f"/runs/{run_id}").json()
        time.sleep(0.1)
    return seen | {"record": {k: view.get(k) for k in ("status", "live", "lastSeq")}}


def retained(http: httpx.Client) -> float | None:
    gauge = re.search(r"^runforge_retained_runs (\S+)$", http.get("/metrics").text, re.MULTILINE)
    return float(gauge[1]) if gauge else None


def stalled_rejoin(server: Server, run_id: str) -> tuple[socket.socket, str]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect: it sets the window
    sock.connect(("127.0.0.1", server.port))
    sock.sendall(
        f"GET /runs/{run_id}/events HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Authorization: Bearer {server.token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    line = b""
    while not line.endswith(b"\r\n") and (byte := sock.recv(1)):  # the status line, then never again
        line += byte
    return sock, line.decode(errors="replace").strip()


def drain(sock: socket.socket) -> dict[str, Any]:
    """Read what is left. end: `reset` or `eof` (the server dropped or closed it), `open` (idle 5 s)."""
    sock.settimeout(5.0)
    size, tail, end = 0, b"", "open"
    try:
        while chunk := sock.recv(1 << 20):
            size, tail = size + len(chunk), (tail + chunk)[-8:]
        end = "eof"
    except ConnectionResetError:
        end = "reset"
    except TimeoutError:
        pass
    finally:
        sock.close()
    return {"end": end, "bytes_left": size, "body_complete": tail.endswith(b"0\r\n\r\n")}


# --------------------------------------------------------------------------- the phases


def stalled_readers(cfg: Config, server: Server, http: httpx.Client) -> dict[str, Any]:
    pid = server.proc.pid
    out: dict[str, Any] = {"rss_idle_mib": rss_mib(pid)}
    out["big_run"] = generate(http, "big", f"huge tokens={cfg.big_tokens}")
    out["reading_rejoin"] = stream(http, "/runs/big/events")
    out["retained_runs"] = retained(http)
    time.sleep(SETTLE_S)
    out["rss_before_mib"] = rss_mib(pid)
    sampler = Sampler(pid, cfg.sample_s)
    sockets = dict(stalled_rejoin(server, "big") for _ in range(cfg.stalled))
    ports = {sock.getsockname()[1]: sock for sock in sockets}
    closed_at: dict[int, float | None] = dict.fromkeys(ports)
    last: dict[int, str] = {}
    max_queued: dict[int, int] = dict.fromkeys(ports, 0)
    while (now := round(time.monotonic() - sampler.t0, 2)) < cfg.watch_s:
        states = tcp_states(server.port)
        for port in ports:
            last[port], queued = states.get(port, ("gone", 0))
            max_queued[port] = max(max_queued[port], queued)
            if closed_at[port] is None and last[port] != "ESTABLISHED":
                closed_at[port] = now
        time.sleep(cfg.sample_s)
    out["peak_while_stalled_mib"] = sampler.finish()
    out["rss_after_watch_mib"] = rss_mib(pid)
    out["status_lines"] = sorted(set(sockets.values()))
    # The server's side of each: when it left ESTABLISHED (s after the first rejoin), its last
    # state, the most its kernel send queue held; then what the client read of what was left.
    out["stalled"] = [
        {"port": p, "closed_at_s": closed_at[p], "state": last[p], "max_send_queue": max_queued[p]} | drain(sock)
        for p, sock in ports.items()
    ]
    out["stalled_log_lines"] = server.log.read_text(errors="replace").count(STALLED_LOG)
    out["rss_samples_mib"] = sampler.samples
    return out


def retained_runs(cfg: Config, server: Server, http: httpx.Client) -> dict[str, Any]:
    pid, t0 = server.proc.pid, time.monotonic()
    out: dict[str, Any] = {"rss_before_mib": rss_mib(pid)}
    runs = [generate(http, f"small-{i}", f"long_text pace=0 tokens={cfg.run_tokens}") for i in range(cfg.runs)]
    ends, sizes = Counter(str(r["last"]) for r in runs), sorted(r["mb"] for r in runs)
    seconds = round(time.monotonic() - t0, 1)
    out["small_runs"] = {"n": len(runs), "s": seconds, "ends": ends, "mb_min_max": [sizes[0], sizes[-1]]}
    time.sleep(SETTLE_S)
    out["rss_after_small_mib"], out["retained_after_small"] = rss_mib(pid), retained(http)
    sampler = Sampler(pid, min(cfg.sample_s, 0.25))
    out["huge_run"] = generate(http, "huge", f"huge tokens={cfg.huge_tokens}")
    out["peak_during_huge_mib"] = sampler.finish()
    time.sleep(SETTLE_S)
    out["rss_after_huge_mib"], out["retained_after_huge"] = rss_mib(pid), retained(http)
    out["huge_rejoin_after"] = stream(http, "/runs/huge/events")  # not kept: its terminal event only
    out["rss_samples_mib"] = sampler.samples
    return out


# --------------------------------------------------------------------------- report


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False).stdout.strip()

    return {
        "nproc": len(os.sched_getaffinity(0)),
        "mem_total_mib": int(Path("/proc/meminfo").read_text().split()[1]) // 1024,
        "python": platform.python_version(),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "git_changes": git("status", "--porcelain").splitlines(),  # others edit the tree meanwhile
        "loadavg_before": os.getloadavg(),
    }


def render(report: dict[str, Any]) -> str:
    m, s, r = report["machine"], report["stalled_readers"], report["retained_runs"]
    shut = [x["closed_at_s"] for x in s["stalled"] if x["closed_at_s"] is not None]
    when = f" at {min(shut):g}-{max(shut):g} s" if shut else ""
    ends = Counter(f"{x['end']}{'' if x['body_complete'] else ' (body cut)'}" for x in s["stalled"])
    big, huge = s["big_run"], r["huge_run"]
    rows = [
        ("server RSS, idle", f"{s['rss_idle_mib']} MiB"),
        ("big run: its stream / a reading rejoin's", f"{big['mb']} MB / {s['reading_rejoin']['mb']} MB"),
        ("RSS before the stalled rejoins", f"{s['rss_before_mib']} MiB"),
        (f"peak RSS, {len(s['stalled'])} stalled rejoins", f"{s['peak_while_stalled_mib']} MiB"),
        (f"RSS {report['config']['watch_s']:g} s after them", f"{s['rss_after_watch_mib']} MiB"),
        ("stalled connections dropped by the server", f"{len(shut)}/{len(s['stalled'])}{when}"),
        ("  as their clients then saw them", ", ".join(f"{n} {k}" for k, n in sorted(ends.items()))),
        ("  'reader stopped reading' log lines", str(s["stalled_log_lines"])),
        (f"RSS after {r['small_runs']['n']} small runs", f"{r['rss_after_small_mib']} MiB"),
        ("retained runs (GET /metrics)", str(r["retained_after_small"])),
        ("huge run: its stream", f"{huge['mb']} MB in {huge['s']} s, ends `{huge['last']}`"),
        ("peak RSS during the huge run", f"{r['peak_during_huge_mib']} MiB"),
        ("RSS after it", f"{r['rss_after_huge_mib']} MiB"),
        ("retained runs after it", str(r["retained_after_huge"])),
        ("a rejoin of the huge run afterwards", f"{r['huge_rejoin_after']['bytes']} bytes"),
    ]
    dirty = f" + {len(m['git_changes'])} uncommitted change(s)" if m["git_changes"] else ""
    head = f"Runforge memory bounds: {m['nproc']} CPUs, {m['mem_total_mib']} MiB, commit {m['git_commit']}{dirty}"
    return "\n".join([head, "", *(f"  {k:<46}{v}" for k, v in rows)])


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwinds through the server's stop

    def expired(*_: object) -> None:
        raise TimeoutError(f"did not finish within --timeout {cfg.timeout:g} s")

    signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, cfg.timeout)
    at = datetime.now(UTC).isoformat(timespec="seconds")
    report: dict[str, Any] = {"benchmark": "memory_bounds", "at": at, "config": asdict(cfg), "machine": machine()}
    work = Path(tempfile.mkdtemp(prefix="runforge-membench-"))
    try:
        with running_server(work, cfg.retain_mb) as server:
            headers = {"Authorization": f"Bearer {server.token}"}
            url, timeout = f"http://127.0.0.1:{server.port}", httpx.Timeout(120.0, connect=5.0)
            with httpx.Client(base_url=url, headers=headers, trust_env=False, timeout=timeout) as http:
                report["stalled_readers"] = stalled_readers(cfg, server, http)
                report["retained_runs"] = retained_runs(cfg, server, http)
    except (TimeoutError, RuntimeError, httpx.HTTPError) as exc:
        print(f"memory_bounds: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        if cfg.keep:
            print(f"kept {work}", file=sys.stderr)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(render(report))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"memory_bounds-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"saved {path.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
