"""Process liveness from /proc, for tests that prove a stopped build left no process behind."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

DEAD_WITHIN_S = 5.0  # generous: SIGKILL takes milliseconds


def proc_state(pid: int) -> tuple[str, int] | None:
    """(state, session id) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text.rsplit(")", 1)[1].split()  # after "pid (comm)", which may hold spaces
    return fields[0], int(fields[3])


def is_alive(pid: int) -> bool:
    state = proc_state(pid)
    return state is not None and state[0] not in ("Z", "X")  # zombie or dead: runs nothing


def session_members(sid: int) -> set[int]:
    members = set()
    for entry in Path("/proc").iterdir():
        state = proc_state(int(entry.name)) if entry.name.isdigit() else None
        if state is not None and state[1] == sid and state[0] not in ("Z", "X"):
            members.add(int(entry.name))
    return members


def processes_in(root: Path) -> list[int]:
    """Live processes whose working directory is inside ``root``: what a build would leave behind."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = Path(os.readlink(entry / "cwd"))
        except OSError:
            continue  # gone, or a zombie (no cwd any more)
        if cwd.is_relative_to(root) and is_alive(int(entry.name)):
            found.append(int(entry.name))
    return found


async def assert_all_dead(pids: set[int]) -> None:
    deadline = time.monotonic() + DEAD_WITHIN_S
    while alive := sorted(pid for pid in pids if is_alive(pid)):
        assert time.monotonic() < deadline, f"still running after {DEAD_WITHIN_S} s: {alive}"
        await asyncio.sleep(0.02)  # polling for a death the kernel does not announce to us


def no_process_left(root: Path) -> Iterator[None]:
    """Body of an autouse fixture: no process a test started in ``root``, and no sandboxed process,
    may outlive it (killed here, then the test fails)."""
    yield
    deadline = time.monotonic() + DEAD_WITHIN_S
    while left := processes_in(root) + sorted(sandboxed_processes()):
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes left running in the workspace: {left}")
        time.sleep(0.02)


def _nspids(pid: int) -> list[int]:
    """A process's pid in each PID namespace it is in, outermost (ours) first."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("NSpid:"):
                return [int(value) for value in line.split()[1:]]
    except (OSError, ValueError):
        pass
    return []


def sandboxed_processes() -> set[int]:
    """Live processes in a PID namespace below ours: what a sandboxed build is, or left behind."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and len(_nspids(int(entry.name))) > 1 and is_alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def host_pids(pids: set[int], *, sandboxed: bool) -> set[int]:
    """Our pids of live processes that know themselves by ``pids`` (inside a sandbox's namespace)."""
    return set(sandboxed_pid_map(pids).values()) if sandboxed else set(pids)


def sandboxed_pid_map(pids: set[int]) -> dict[int, int]:
    """Sandboxed live processes known inside by one of ``pids``: inner pid -> our pid."""
    found = {}
    for pid in sandboxed_processes():
        inner = _nspids(pid)[-1]
        if inner in pids:
            found[inner] = pid
    return found


async def assert_no_sandbox_left() -> None:
    deadline = time.monotonic() + DEAD_WITHIN_S
    while left := sandboxed_processes():
        assert time.monotonic() < deadline, f"sandboxed processes still running after {DEAD_WITHIN_S} s: {left}"
        await asyncio.sleep(0.02)  # polling for a death the kernel does not announce to us


def _parent(pid: int) -> int | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(text.rsplit(")", 1)[1].split()[1])


def outer_leader(pid: int) -> int:
    """The process that leads ``pid``'s build: its session leader, or, in a sandbox, the sandbox's
    first process outside it (bubblewrap), which the build runner spawned and must have reaped."""
    if len(_nspids(pid)) == 1:
        state = proc_state(pid)
        assert state is not None, f"process {pid} is gone"
        return state[1]
    current: int | None = pid
    while current is not None and len(_nspids(current)) > 1:
        current = _parent(current)
    assert current is not None, f"no parent of {pid} outside its sandbox"
    return current
