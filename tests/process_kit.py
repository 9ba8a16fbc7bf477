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
    """Body of an autouse fixture: no process a test started in ``root`` may outlive it
    (killed here, then the test fails)."""
    yield
    deadline = time.monotonic() + DEAD_WITHIN_S
    while left := processes_in(root):
        if time.monotonic() > deadline:
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            pytest.fail(f"processes left running in the workspace: {left}")
        time.sleep(0.02)
