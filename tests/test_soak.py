"""The soak (bench/soak.py), short: 100 runs at once for 10 s, every way a run can end.

The full one (1,000 at once for 60 s) is a benchmark; its figures are in docs/reliability.md.
This one runs the same script, with the same checks, as three real processes.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
BENCH = REPO / "bench"
SOAK_TIMEOUT_S = 240.0  # generous: only there to turn a hang into a failure


@pytest.fixture(scope="module")
def soak_module() -> Iterator[ModuleType]:
    """bench/soak.py as a module (it imports its neighbour stop_latency as a top-level module)."""
    sys.path.insert(0, str(BENCH))
    try:
        yield importlib.import_module("soak")
    finally:
        sys.path.remove(str(BENCH))


@pytest.mark.timeout(SOAK_TIMEOUT_S + 30)
def test_short_soak_keeps_every_promise(tmp_path: Path) -> None:
    argv = [sys.executable, str(BENCH / "soak.py"), "--concurrency", "100", "--duration", "10"]
    # Three warm-up runs a slot, not one: the RSS baseline must already hold the mix's high-water
    # mark (the allocator keeps it), or a 10 s run reads it as growth. Seen: 10.7% over 1 warm-up.
    argv += ["--pace-ms", "20", "--timeout", str(SOAK_TIMEOUT_S), "--warmup-runs", "300"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=SOAK_TIMEOUT_S + 20)
    assert done.returncode == 0, f"soak failed (exit {done.returncode}):\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    summary = _summary(done.stdout)
    assert all(count == 0 for count in summary["zero_counts"].values()), summary["zero_counts"]
    # The mix really happened: every way a run can end was exercised, not only the easy ones.
    outcomes = set(summary["by_outcome"])
    for outcome in (
        "completed/-",
        "interrupted/user_stop",
        "interrupted/client_disconnect",
        "interrupted/superseded",
        "failed/upstream_error",
    ):
        assert outcome in outcomes, f"no {outcome} run in {summary['by_outcome']}"
    assert summary["runs"] >= 100


def _summary(stdout: str) -> dict[str, Any]:
    line = next(line for line in stdout.splitlines() if line.startswith('{"runs":'))
    result: dict[str, Any] = json.loads(line)
    return result


# The checks themselves: each must flag the run that breaks its promise (else the soak proves nothing).


def _clean_stopped_run(soak: ModuleType) -> Any:
    r = soak.RunResult("r1", "a1", "stop_tools", "interrupted", "user_stop")
    r.status_code, r.terminal, r.detail, r.terminal_events, r.stop_status = 200, "interrupted", "user_stop", 1, 202
    r.snap_before = {}
    r.snap_terminal = r.snap_after = {".": (0, 0), "file_1.txt": (10, 1)}
    r.server = {"status": "interrupted", "live": False, "stopReason": "user_stop", "toolCallsExecuted": 1}
    return r


def test_soak_checks_pass_a_clean_run(soak_module: ModuleType) -> None:
    assert soak_module.run_failures(_clean_stopped_run(soak_module)) == []


@pytest.mark.parametrize(
    ("breakage", "check"),
    [
        (lambda r: setattr(r, "events_after_terminal", 1), "events_after_terminal"),
        (lambda r: setattr(r, "terminal_events", 2), "terminal_events_not_one"),
        (lambda r: setattr(r, "snap_after", {**r.snap_terminal, "file_2.txt": (9, 2)}), "workspace_changed_after_stop"),
        (lambda r: r.server.update(toolCallsExecuted=2), "tool_calls_vs_files_written"),
        (lambda r: r.server.update(live=True), "not_final"),
        (lambda r: r.server.update(status="completed"), "wrong_outcome"),
        (lambda r: setattr(r, "stop_status", 409), "wrong_outcome"),
        (lambda r: setattr(r, "stream_left_open", True), "streams_left_open"),
    ],
)
def test_soak_checks_flag_a_broken_promise(soak_module: ModuleType, breakage: Any, check: str) -> None:
    run = _clean_stopped_run(soak_module)
    breakage(run)
    assert check in soak_module.run_failures(run)


def test_soak_allows_a_cut_writes_temp_file_to_go_after_the_stop(soak_module: ModuleType) -> None:
    run = _clean_stopped_run(soak_module)
    run.snap_terminal = {**run.snap_after, ".file_2.txt.7afba8f8a6fb09c9.tmp": (0, 3)}  # seen in CI
    assert soak_module.run_failures(run) == []


def test_soak_flags_an_upstream_request_sent_after_the_stop(soak_module: ModuleType) -> None:
    """On the server's own clock: the send time it stamps (X-Runforge-Sent-At) against the time it
    accepted the stop. A request without a send time cannot be cleared, so it counts as late."""
    run = _clean_stopped_run(soak_module)
    run.server["stopRequestedAt"] = "2027-01-15T08:00:00.010000+00:00"  # 1_800_000_000.010
    before = {"run_id": "r1", "started_at": 5.0, "sent_at": 1_800_000_000.005}
    after = {"run_id": "r1", "started_at": 5.0, "sent_at": 1_800_000_000.011}
    unstamped = {"run_id": "r1", "started_at": 5.0, "sent_at": None}
    assert soak_module.upstream_after_stop([run], [before]) == []
    assert soak_module.upstream_after_stop([run], [before, after]) == ["r1"]
    assert soak_module.upstream_after_stop([run], [unstamped]) == ["r1"]


def test_soak_tells_a_late_arrival_from_a_late_send(soak_module: ModuleType) -> None:
    """The flake of issue 17: sent 5 ms before the stop, received by a lagging simulator 30 ms
    after it. Not a broken promise; reported (with its gaps), not counted."""
    run = _clean_stopped_run(soak_module)
    run.stop_sent_mono, run.stop_sent_wall = 100.0, 1_800_000_000.0  # the client's two clocks, read together
    run.server["stopRequestedAt"] = "2027-01-15T08:00:00.010000+00:00"
    late_arrival = {"run_id": "r1", "started_at": 100.04, "sent_at": 1_800_000_000.005}
    assert soak_module.upstream_after_stop([run], [late_arrival]) == []
    (seen,) = soak_module.arrivals_after_stop([run], [late_arrival])
    assert (seen["sent_before_stop_ms"], seen["arrived_after_stop_ms"]) == (5.0, 30.0)
