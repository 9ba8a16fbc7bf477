"""The build that follows a completed vue_project run: ``npm install`` when needed, then ``npm run build``.

Why it is shaped this way:

* vite writes into a fresh temp dir inside the workspace, never into the live ``dist/``: the preview
  keeps serving the previous complete build until :func:`publish_build` swaps the new one in.
* ``npm install`` is slow, so it runs only when package.json or package-lock.json changed since
  the last successful install (a hash stamp inside ``node_modules``).
* every npm runs in its own session, which is its own process group. One ``killpg`` then ends npm,
  the shell, the script and whatever the script spawned: on a stop, on a timeout, and after a
  normal exit too (a script may leave a watcher behind).
* a stop closes the gate and cancels the run's task. The cancellation becomes "kill the group, wait
  until it is dead, remove the temp dir, re-raise", so once the run has ended nothing of its build
  is still running or left half-made in the workspace.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import time
from collections import deque
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from app.control.cancel import StopGate, to_thread_to_the_end
from app.control.events import BuildEvent

__all__ = [
    "BUILD_DIR_PREFIX",
    "INSTALL_STAMP",
    "BuildFailed",
    "BuildFailureCode",
    "BuildResult",
    "BuildSettings",
    "discard_build",
    "publish_build",
    "run_build",
]

BuildFailureCode = Literal["install_failed", "build_failed", "build_timeout", "npm_missing"]
Emit = Callable[[BuildEvent], None]

BUILD_DIR_PREFIX = ".runforge-build-"  # temp out dirs, and the old dist while a publish swaps it out
INSTALL_STAMP = ".runforge-install.sha256"  # inside node_modules: it goes when node_modules goes
_DEPENDENCY_FILES = ("package.json", "package-lock.json")

# No colours, no prompts, no update or funding notices: output meant for a log, not a terminal.
_CHILD_ENV = {
    "CI": "1",
    "NO_COLOR": "1",
    "FORCE_COLOR": "0",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}
# CSI sequences (colours, cursor moves), OSC sequences (titles, links), and two-byte escapes.
_ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)|[@-Z\\-_])")
_CUT_MARK = "…"
# Bytes kept of one line before decoding: 4 per character (UTF-8), plus room for escape codes.
_BYTES_PER_CHAR = 4
_ESCAPE_ALLOWANCE = 1024
# After the group is killed its output ends at once; only a process that left the group (its own
# setsid) can still hold the pipe, and we stop listening to it after this long.
_OUTPUT_GRACE_S = 2.0


@dataclass(frozen=True, slots=True)
class BuildSettings:
    enabled: bool = True
    npm: str = "npm"
    install_timeout_s: float = 600.0
    build_timeout_s: float = 300.0
    tail_lines: int = 40  # lines of log kept for the failure message
    max_line_chars: int = 2000  # longer output lines are cut


class BuildFailed(Exception):
    """The build could not produce a site; ``message`` ends with the tail of the failing step's log."""

    def __init__(self, code: BuildFailureCode, summary: str, tail: str = "") -> None:
        message = f"{summary}\n{tail}" if tail else summary
        super().__init__(message)
        self.code: BuildFailureCode = code
        self.message = message
        self.tail = tail


@dataclass(frozen=True, slots=True)
class BuildResult:
    out_dir: Path | None  # the freshly built site (a temp dir inside the workspace), None when skipped
    installed: bool  # npm install ran
    skipped_reason: str | None


@dataclass(frozen=True, slots=True)
class _Command:
    step: str  # install | build
    label: str  # what the started event shows: no host paths
    argv: tuple[str, ...]
    timeout_s: float


@dataclass(frozen=True, slots=True)
class _Outcome:
    exit_code: int | None  # None: ran out of time
    seconds: float
    tail: str


async def run_build(workspace: Path, settings: BuildSettings, emit: Emit, gate: StopGate) -> BuildResult:
    """Install (if needed) and build the project in ``workspace`` into a temp dir, emitting progress.

    Raises :class:`BuildFailed` when the project cannot be built, :class:`RunCancelled` when the gate
    is closed before a step starts, and ``CancelledError`` (after killing npm's whole process group
    and removing the temp dir) when the task is cancelled.
    """
    if not settings.enabled:
        return _skipped(emit, "disabled", "builds are disabled")
    skip = await _skip_reason(workspace, emit)
    if skip is not None:
        return _skipped(emit, *skip)
    installed = await _install(workspace, settings, emit, gate)
    out_dir = await _build(workspace, settings, emit, gate)
    return BuildResult(out_dir, installed, None)


def publish_build(workspace: Path, out_dir: Path) -> None:
    """Swap ``out_dir`` in as ``workspace/dist`` (blocking: run it in a thread).

    A rename cannot replace a non-empty directory, so the old dist is renamed away first and
    deleted only once the new build has its name: ``dist/`` is the previous or the new complete
    build, never a mix (between the two renames it is absent for a moment).
    """
    dist = workspace / "dist"
    old = workspace / f"{BUILD_DIR_PREFIX}replaced-{secrets.token_hex(8)}"
    had_dist = _rename_if_present(dist, old)
    try:
        out_dir.rename(dist)
    except OSError:
        if had_dist:
            old.rename(dist)  # keep serving the previous build
        raise
    if had_dist:
        _remove_path(old)


def discard_build(workspace: Path) -> None:
    """Remove temp build dirs a stopped or crashed run left behind (blocking: run it in a thread)."""
    for path in workspace.glob(f"{BUILD_DIR_PREFIX}*"):
        _remove_path(path)


# -- deciding what to do -----------------------------------------------------------------


def _skipped(emit: Emit, reason: str, line: str) -> BuildResult:
    emit(BuildEvent("build", "skipped", line=line))
    return BuildResult(None, False, reason)


async def _skip_reason(workspace: Path, emit: Emit) -> tuple[str, str] | None:
    """(reason, line) when there is nothing to build; None when package.json has a build script."""
    try:
        raw = await asyncio.to_thread(_read_if_present, workspace / "package.json")
        return _nothing_to_build(raw)
    except (OSError, ValueError) as exc:
        # A project the agent broke: the run fails with a reason the user can act on.
        raise _failed(emit, "build", "build_failed", f"cannot read package.json: {_reason(exc)}", None) from None


def _read_if_present(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _nothing_to_build(raw: bytes | None) -> tuple[str, str] | None:
    if raw is None:
        return ("no package.json", "no package.json in the workspace")
    package = json.loads(raw)  # ValueError (JSONDecodeError, UnicodeDecodeError) when broken
    if not isinstance(package, dict):
        raise ValueError("not a JSON object")
    scripts = package.get("scripts")
    build = scripts.get("build") if isinstance(scripts, dict) else None
    if not isinstance(build, str) or not build.strip():
        return ("no build script", "package.json has no scripts.build")
    return None


def _reason(exc: OSError | ValueError) -> str:
    # OSError's str() carries the absolute host path; its strerror is the reason alone.
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    return str(exc)


# -- install -----------------------------------------------------------------------------


async def _install(workspace: Path, settings: BuildSettings, emit: Emit, gate: StopGate) -> bool:
    """Run ``npm install`` unless the dependencies are unchanged since the last one; True if it ran."""
    if not await asyncio.to_thread(_install_needed, workspace):
        emit(BuildEvent("install", "skipped", line="dependencies unchanged"))
        return False
    argv = (settings.npm, "install", "--no-audit", "--no-fund", "--loglevel=error")
    command = _Command("install", "npm install", argv, settings.install_timeout_s)
    outcome = await _run_step(command, workspace, settings, emit, gate)
    if outcome.exit_code != 0:
        raise _failed(emit, "install", "install_failed", f"npm install exited with code {outcome.exit_code}", outcome)
    # Hashed after the install: npm writes package-lock.json when there is none, and the stamp must
    # match what the next build will hash.
    digest = await asyncio.to_thread(_dependency_digest, workspace)
    await to_thread_to_the_end(_write_stamp, workspace, digest, gate)
    emit(BuildEvent("install", "finished", exit_code=0, seconds=outcome.seconds))
    return True


def _install_needed(workspace: Path) -> bool:
    try:
        stored = (workspace / "node_modules" / INSTALL_STAMP).read_text(encoding="ascii").strip()
    except (OSError, ValueError):
        return True  # never installed here, or node_modules was removed
    return stored != _dependency_digest(workspace)


def _dependency_digest(workspace: Path) -> str:
    """sha256 over package.json and package-lock.json, each framed so that "absent" differs from "empty"."""
    digest = hashlib.sha256()
    for name in _DEPENDENCY_FILES:
        data = _read_if_present(workspace / name)
        header = f"{name}:absent\n" if data is None else f"{name}:{len(data)}\n"
        digest.update(header.encode())
        digest.update(data or b"")
    return digest.hexdigest()


def _write_stamp(workspace: Path, digest: str, gate: StopGate) -> None:
    modules = workspace / "node_modules"
    with gate.commit():  # a stopped run records nothing; the next build just installs again
        modules.mkdir(exist_ok=True)  # an install without dependencies creates no node_modules
        (modules / INSTALL_STAMP).write_text(f"{digest}\n", encoding="ascii")


# -- build -------------------------------------------------------------------------------


async def _build(workspace: Path, settings: BuildSettings, emit: Emit, gate: StopGate) -> Path:
    """Run ``npm run build`` into a fresh temp dir and return it; the live dist/ is not touched."""
    # Named before it is made: a stop that lands while the thread makes it (the mkdir commits,
    # then the cancellation arrives) must still find it to remove.
    out_dir = workspace / f"{BUILD_DIR_PREFIX}{secrets.token_hex(8)}"
    # Absolute, so it lands here even when the vite config sets another root.
    # Relative to the workspace (npm's cwd): npm echoes the command, and output must not show host paths.
    argv = (settings.npm, "run", "build", "--", "--outDir", out_dir.name, "--emptyOutDir")
    command = _Command("build", "npm run build", argv, settings.build_timeout_s)
    try:
        await to_thread_to_the_end(_make_build_dir, out_dir, gate)
        outcome = await _run_step(command, workspace, settings, emit, gate)
        await _check_site(out_dir, outcome, emit)
    except BaseException:
        # Failed, timed out or stopped: a half-made site must not outlive the run.
        await to_thread_to_the_end(_remove_path, out_dir)
        raise
    emit(BuildEvent("build", "finished", exit_code=0, seconds=outcome.seconds))
    return out_dir


def _make_build_dir(out_dir: Path, gate: StopGate) -> None:
    with gate.commit():
        out_dir.mkdir()


async def _check_site(out_dir: Path, outcome: _Outcome, emit: Emit) -> None:
    if outcome.exit_code != 0:
        raise _failed(emit, "build", "build_failed", f"npm run build exited with code {outcome.exit_code}", outcome)
    if not await asyncio.to_thread((out_dir / "index.html").is_file):
        raise _failed(emit, "build", "build_failed", "npm run build succeeded but wrote no index.html", outcome)


def _failed(emit: Emit, step: str, code: BuildFailureCode, summary: str, outcome: _Outcome | None) -> BuildFailed:
    """Emit the step's failed event and return the exception to raise."""
    exit_code = outcome.exit_code if outcome else None
    seconds = outcome.seconds if outcome else None
    emit(BuildEvent(step, "failed", line=summary, exit_code=exit_code, seconds=seconds))
    return BuildFailed(code, summary, outcome.tail if outcome else "")


# -- one npm command ---------------------------------------------------------------------


async def _run_step(
    command: _Command, workspace: Path, settings: BuildSettings, emit: Emit, gate: StopGate
) -> _Outcome:
    """Run one npm command to its end (exit, timeout or cancellation), always killing its whole group.

    Emits started and output events; the caller emits finished or failed, since only it knows
    whether the result is good. Raises :class:`BuildFailed` on a timeout or a missing npm.
    """
    gate.check()  # a stopped run starts no npm
    emit(BuildEvent(command.step, "started", line=command.label))
    output = _Output(command.step, settings, emit, gate)
    started = time.monotonic()
    try:
        transport = await _spawn(command.argv, workspace, output)
    except FileNotFoundError:
        summary = f"cannot run {command.label}: {settings.npm!r} was not found (builds need Node.js and npm)"
        raise _failed(emit, command.step, "npm_missing", summary, None) from None
    try:
        exit_code = await _wait_for_exit(transport, output, command.timeout_s)
    except asyncio.CancelledError:
        output.mute()  # the run is stopped: it emits nothing more
        raise
    finally:
        await _to_the_end(_end_group(transport, output))
    outcome = _Outcome(exit_code, time.monotonic() - started, output.tail())
    if exit_code is None:
        summary = f"{command.label} did not finish within {command.timeout_s:g} s"
        raise _failed(emit, command.step, "build_timeout", summary, outcome)
    return outcome


async def _spawn(argv: tuple[str, ...], workspace: Path, output: _Output) -> asyncio.SubprocessTransport:
    """Start ``argv`` as the leader of a new session, so that one killpg reaches all it starts.

    The creation is shielded: a cancellation that arrives meanwhile must not lose the handle of a
    process that is about to exist, so we wait for it, kill its group, and only then re-raise.
    """
    loop = asyncio.get_running_loop()
    creating = asyncio.ensure_future(
        loop.subprocess_exec(
            lambda: output,
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            cwd=workspace,
            env=_child_env(),
            start_new_session=True,
        )
    )
    try:
        transport, _ = await asyncio.shield(creating)
    except asyncio.CancelledError:
        output.mute()
        await _to_the_end(_abandon(creating, output))
        raise
    return transport


async def _abandon(creating: asyncio.Future[tuple[asyncio.SubprocessTransport, _Output]], output: _Output) -> None:
    await asyncio.wait({creating})
    if creating.cancelled() or creating.exception() is not None:
        return  # no process was started (exception() also marks the error as retrieved)
    transport, _ = creating.result()
    await _end_group(transport, output)


async def _wait_for_exit(transport: asyncio.SubprocessTransport, output: _Output, timeout_s: float) -> int | None:
    """npm's exit code, or None when it ran out of time."""
    try:
        async with asyncio.timeout(timeout_s):
            await output.exited.wait()
    except TimeoutError:
        return None
    return transport.get_returncode()  # set before process_exited() is called


async def _end_group(transport: asyncio.SubprocessTransport, output: _Output) -> None:
    """Kill npm's whole process group, wait until npm is reaped and the output has ended, release the pipe.

    Also after a normal exit: anything the script left running (a watcher) dies with the group,
    and would otherwise hold the output pipe open.
    """
    _kill_group(transport.get_pid())
    await output.exited.wait()
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(_OUTPUT_GRACE_S):
            await output.output_ended.wait()
    transport.close()


def _kill_group(pgid: int) -> None:
    # start_new_session: npm's pid is its group's id. The group outlives npm while any member
    # lives, and its id cannot be reused until then.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


async def _to_the_end(cleanup: Coroutine[Any, Any, None]) -> None:
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


# -- output ------------------------------------------------------------------------------


class _Output(asyncio.SubprocessProtocol):
    """Streams one npm command's output as events, keeps its tail, and tells when npm exited."""

    def __init__(self, step: str, settings: BuildSettings, emit: Emit, gate: StopGate) -> None:
        self.exited = asyncio.Event()  # npm has exited and been reaped
        self.output_ended = asyncio.Event()  # every writer of the pipe is gone
        self._step = step
        self._emit = emit
        self._gate = gate
        self._muted = False
        self._max_chars = settings.max_line_chars
        self._tail: deque[str] = deque(maxlen=settings.tail_lines)
        self._lines = _LineSplitter(_BYTES_PER_CHAR * settings.max_line_chars + _ESCAPE_ALLOWANCE)

    def mute(self) -> None:
        self._muted = True

    def tail(self) -> str:
        return "\n".join(self._tail)

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
        if not line.strip():
            return  # an empty output event would carry nothing
        self._tail.append(line)
        # The gate closes before the task is cancelled: output arriving in between is not shown either.
        if not (self._muted or self._gate.closed):
            self._emit(BuildEvent(self._step, "output", line=line))


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


# -- files -------------------------------------------------------------------------------


def _rename_if_present(source: Path, target: Path) -> bool:
    try:
        source.rename(target)
    except FileNotFoundError:
        return False
    return True


def _remove_path(path: Path) -> None:
    """Best effort: what is left is removed by the next :func:`discard_build`."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)


# What npm and node need from the server's environment; nothing else (API keys, database URLs)
# reaches scripts the model wrote.
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "SHELL", "NODE_EXTRA_CA_CERTS")


def _child_env() -> dict[str, str]:
    inherited = {
        key: value
        for key, value in os.environ.items()
        if key in _INHERITED_ENV or key.lower().startswith("npm_config_")
    }
    return {**inherited, **_CHILD_ENV}
