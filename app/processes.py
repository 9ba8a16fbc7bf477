"""A command in a process group of its own: spawned in a session, its output streamed as lines,
killed with its whole group when it ends, times out or is cancelled.

Why it is shaped this way:

* the command's first process leads a session of its own, which is its own process group. One
  ``killpg`` then ends it and all it started in that group (a process that calls setsid itself
  leaves; a sandbox's PID namespace catches those).
* the group is killed after a normal exit too: a script may leave a watcher behind.
* a cancellation (a stop) becomes "kill the group, wait until it is dead, re-raise", so once the
  caller's task has ended nothing the command started is still running.
* output is read as lines of bounded length: a minified bundle printed on one line is not
  buffered whole. What a line means is the caller's (``GroupOutput.on_line``).

Used by the build (app/builder), whose commands run inside the sandbox (app/sandbox).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, Protocol

# CSI sequences (colours, cursor moves), OSC sequences (titles, links), and two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CUT_MARK = "…"
# Bytes kept of one line before decoding: 4 per character (UTF-8), plus room for escape codes.
_BYTES_PER_CHAR = 4
_ESCAPE_ALLOWANCE = 1024
# After the group is killed its output ends at once; only a process that left the group (its own
# setsid) can still hold the pipe, and we stop listening to it after this long.
_OUTPUT_GRACE_S = 2.0


class Command(Protocol):
    """What to spawn (a sandbox's Jail is one)."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path


class GroupOutput(asyncio.SubprocessProtocol):
    """Splits the command's output into clean lines for ``on_line``, keeps their tail, and tells
    when the command exited and when its output ended."""

    def __init__(self, *, tail_lines: int, max_line_chars: int) -> None:
        self.exited = asyncio.Event()  # the leader has exited and been reaped
        self.output_ended = asyncio.Event()  # every writer of the pipe is gone
        self.pid: int | None = None
        self._max_chars = max_line_chars
        self._tail: deque[str] = deque(maxlen=tail_lines)
        self._lines = _LineSplitter(_BYTES_PER_CHAR * max_line_chars + _ESCAPE_ALLOWANCE)

    def on_line(self, line: str) -> None:
        """One line of output (not blank, escape codes dropped, cut to the maximum length)."""

    def mute(self) -> None:
        """The caller is being stopped: its lines are of no more use to anyone."""

    def tail(self) -> str:
        return "\n".join(self._tail)

    def kill(self) -> None:
        """End the command now (a watchdog's verdict): its group is killed, and it exits."""
        if self.pid is not None:
            kill_group(self.pid)

    def pipe_data_received(self, fd: int, data: bytes) -> None:
        for raw in self._lines.feed(data):
            self._line(raw)

    def pipe_connection_lost(self, fd: int, exc: Exception | None) -> None:
        for raw in self._lines.flush():
            self._line(raw)
        self.output_ended.set()

    def process_exited(self) -> None:
        self.exited.set()

    def _line(self, raw: bytes) -> None:
        line = _clean_line(raw, self._max_chars)
        if line.strip():  # an empty line carries nothing
            self._tail.append(line)
            self.on_line(line)


async def run_in_group(command: Command, output: GroupOutput, timeout_s: float) -> int | None:
    """Run the command to its end (exit, timeout or cancellation), always killing its whole group.

    Returns the exit code, or None when it ran out of time. FileNotFoundError: no such program.
    """
    transport = await _spawn(command, output)
    try:
        return await _wait_for_exit(transport, output, timeout_s)
    except asyncio.CancelledError:
        output.mute()  # the run is stopped: it emits nothing more
        raise
    finally:
        await to_the_end(_end_group(transport, output))


async def _spawn(command: Command, output: GroupOutput) -> asyncio.SubprocessTransport:
    """Start the step as the leader of a new session, so that one killpg reaches all it starts.

    The creation is shielded: a cancellation that arrives meanwhile must not lose the handle of a
    process that is about to exist, so we wait for it, kill its group, and only then re-raise.
    close_fds (the default) leaves the command no descriptor of the server's but its three pipes.
    """
    loop = asyncio.get_running_loop()
    creating = asyncio.ensure_future(
        loop.subprocess_exec(
            lambda: output,
            *command.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=command.cwd,
            env=command.env,
            start_new_session=True,
        )
    )
    try:
        transport, _ = await asyncio.shield(creating)
    except asyncio.CancelledError:
        output.mute()
        await to_the_end(_abandon(creating, output))
        raise
    output.pid = transport.get_pid()
    return transport


async def _abandon(
    creating: asyncio.Future[tuple[asyncio.SubprocessTransport, GroupOutput]], output: GroupOutput
) -> None:
    await asyncio.wait({creating})
    if creating.cancelled() or creating.exception() is not None:
        return  # no process was started (exception() also marks the error as retrieved)
    transport, _ = creating.result()
    await _end_group(transport, output)


async def _wait_for_exit(transport: asyncio.SubprocessTransport, output: GroupOutput, timeout_s: float) -> int | None:
    """The step's exit code, or None when it ran out of time."""
    try:
        async with asyncio.timeout(timeout_s):
            await output.exited.wait()
    except TimeoutError:
        return None
    return transport.get_returncode()  # set before process_exited() is called


async def _end_group(transport: asyncio.SubprocessTransport, output: GroupOutput) -> None:
    """Kill the whole process group, wait until its leader is reaped and the output has ended."""
    kill_group(transport.get_pid())
    await output.exited.wait()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_OUTPUT_GRACE_S):
            await output.output_ended.wait()
    transport.close()


def kill_group(pgid: int) -> None:
    # start_new_session: the leader's pid is its group's id. The group outlives the leader while
    # any member lives, and its id cannot be reused until then.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


async def to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
    """Run ``cleanup`` to its end even if we are cancelled meanwhile, then re-raise the cancellation.

    A second stop must not interrupt the wait for a killed process group: the run is only over
    once nothing of it is still running.
    """
    task = asyncio.ensure_future(cleanup)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            cancelled = True
    error = task.exception()
    if cancelled:
        raise asyncio.CancelledError
    if error is not None:
        raise error


class _LineSplitter:
    """Splits a byte stream into lines, keeping at most ``max_bytes`` of each.

    The cap bounds memory: a minified bundle printed on one line must not be buffered whole.
    Splitting bytes on b"\\n" is safe for UTF-8, where that byte is never part of another character.
    """

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._line = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        lines: list[bytes] = []
        start = 0
        while (end := data.find(b"\n", start)) != -1:
            self._keep(data[start:end])
            lines.append(bytes(self._line))
            self._line.clear()
            start = end + 1
        self._keep(data[start:])
        return lines

    def flush(self) -> list[bytes]:
        """The last line, when the output did not end with a newline."""
        if not self._line:
            return []
        line = bytes(self._line)
        self._line.clear()
        return [line]

    def _keep(self, piece: bytes) -> None:
        room = self._max_bytes - len(self._line)
        if room > 0:
            self._line += piece[:room]


def _clean_line(raw: bytes, max_chars: int) -> str:
    """Decode one output line, drop escape codes and the trailing CR, and cut it to ``max_chars``."""
    line = _ANSI.sub("", raw.decode("utf-8", errors="replace")).rstrip("\r")
    if len(line) > max_chars:
        line = line[: max(max_chars - len(_CUT_MARK), 0)] + _CUT_MARK
    return line
