"""The build that follows a completed vue_project run: ``npm install`` when needed, then ``npm run build``.

Why it is shaped this way:

* both steps run in the sandbox (app/sandbox): the install with network but without any package's
  scripts (``--ignore-scripts``, and only registry packages: app/builder/dependencies.py), the build,
  which runs the scripts and config the model wrote, without network.
* vite writes into a fresh temp dir inside the workspace, never into the live ``dist/``: the preview
  keeps serving the previous complete build until :func:`app.builder.publish.publish_build` swaps the new one in. A
  build ended by a limit, a timeout or a stop leaves the workspace as the last complete build left it.
* ``npm install`` is slow, so it runs only when package.json or package-lock.json changed since
  the last successful install (a hash stamp inside ``node_modules``).
* each step is supervised as one process group (app/processes.py): a stop closes the gate
  and cancels the run's task, which becomes "kill the group, wait until it is dead, remove the
  temp dir, re-raise", so once the run has ended nothing of its build is running or half-made.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.builder.dependencies import DEFAULT_REGISTRY, DependencyRefused, check_install_inputs
from app.builder.output import BuildOutput, Emit
from app.builder.publish import BUILD_DIR_PREFIX, remove_path
from app.control.cancel import StopGate, to_thread_to_the_end
from app.control.events import BuildEvent
from app.processes import run_in_group, to_the_end
from app.sandbox import Confinement, Jail, SandboxLimits, SandboxUnavailable, sandbox_for
from app.sandbox.quota import remove_added, tree_paths, watch_growth
from app.settings import BuildSettings

BuildFailureCode = Literal[
    "install_failed", "build_failed", "build_timeout", "build_limit", "npm_missing", "sandbox_unavailable"
]

INSTALL_STAMP = ".runforge-install.sha256"  # inside node_modules: it goes when node_modules goes
_DEPENDENCY_FILES = ("package.json", "package-lock.json")
_MIB = 1024 * 1024

# No colours, no prompts, no update or funding notices: output meant for a log, not a terminal.
_CHILD_ENV = {
    "CI": "1",
    "NO_COLOR": "1",
    "FORCE_COLOR": "0",
    "npm_config_update_notifier": "false",
    "npm_config_fund": "false",
    "npm_config_audit": "false",
}
# The install reaches the registry through the operator's proxy and CA, if there are any. Only the
# install: node reads NODE_EXTRA_CA_CERTS at every start (~40 ms here), and the build needs no TLS.
_PROXY_ENV = ("http_proxy", "https_proxy", "no_proxy", "node_extra_ca_certs")


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
    network: bool = False  # only the install fetches, and it runs no package's scripts


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


# -- deciding what to do -----------------------------------------------------------------


def _skipped(emit: Emit, reason: str, line: str) -> BuildResult:
    emit(BuildEvent("build", "skipped", line=line))
    return BuildResult(None, False, reason)


async def _skip_reason(workspace: Path, emit: Emit) -> tuple[str, str] | None:
    """(reason, line) when there is nothing to build; None when package.json has a build script."""
    try:
        raw = await asyncio.to_thread(_read_if_present, workspace / "package.json")
        return _nothing_to_build(raw)
    except (OSError, ValueError, RecursionError) as exc:
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


def _reason(exc: OSError | ValueError | RecursionError) -> str:
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
    await _check_install_inputs(workspace, emit)
    argv = (settings.npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error")
    command = _Command("install", "npm install", argv, settings.install_timeout_s, network=True)
    outcome = await _run_step(command, workspace, settings, emit, gate)
    if outcome.exit_code != 0:
        raise _failed(emit, "install", "install_failed", f"npm install exited with code {outcome.exit_code}", outcome)
    # Hashed after the install: npm writes package-lock.json when there is none, and the stamp must
    # match what the next build will hash.
    digest = await asyncio.to_thread(_dependency_digest, workspace)
    await to_thread_to_the_end(_write_stamp, workspace, digest, gate)
    emit(BuildEvent("install", "finished", exit_code=0, seconds=outcome.seconds))
    return True


async def _check_install_inputs(workspace: Path, emit: Emit) -> None:
    try:
        await asyncio.to_thread(check_install_inputs, workspace, _registry())
    except (DependencyRefused, OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)  # no host paths
        raise _failed(emit, "install", "install_failed", f"npm install refused: {reason}", None) from None


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
        await to_thread_to_the_end(remove_path, out_dir)
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
    """Run one npm command in the sandbox to its end (exit, timeout, limit or cancellation).

    Emits started and output events; the caller emits finished or failed, since only it knows
    whether the result is good. Raises :class:`BuildFailed` on a timeout, a limit, a missing npm
    or a missing sandbox.
    """
    gate.check()  # a stopped run starts no npm
    emit(BuildEvent(command.step, "started", line=command.label))
    jail = await _confine(command, workspace, settings, emit)
    output = BuildOutput(
        command.step, emit, gate, tail_lines=settings.tail_lines, max_line_chars=settings.max_line_chars
    )
    started = time.monotonic()
    try:
        exit_code = await _supervised(jail, output, command, workspace, settings.sandbox.limits)
        limit = await asyncio.to_thread(jail.limit_hit) if exit_code else None
    finally:
        await to_the_end(asyncio.to_thread(jail.close))
    outcome = _Outcome(exit_code, time.monotonic() - started, output.tail())
    if exit_code is None:
        summary = f"{command.label} did not finish within {command.timeout_s:g} s"
        raise _failed(emit, command.step, "build_timeout", summary, outcome)
    if exit_code and (limit := limit or output.limit):
        raise _failed(emit, command.step, "build_limit", _limit_summary(command, limit, settings), outcome)
    return outcome


async def _confine(command: _Command, workspace: Path, settings: BuildSettings, emit: Emit) -> Jail:
    """The jail the step runs in; a stop meanwhile releases it before the cancellation goes on."""
    if await asyncio.to_thread(shutil.which, settings.npm) is None:
        summary = f"cannot run {command.label}: {settings.npm!r} was not found (builds need Node.js and npm)"
        raise _failed(emit, command.step, "npm_missing", summary, None)
    sandbox = await asyncio.to_thread(sandbox_for, settings.sandbox)
    spec = Confinement(
        workspace,
        network=command.network,
        env=_step_env(network=command.network),
        cache=await asyncio.to_thread(_npm_cache, settings) if command.network else None,
        limits=settings.sandbox.limits,
    )
    making = asyncio.ensure_future(asyncio.to_thread(sandbox.confine, list(command.argv), spec))
    try:
        return await asyncio.shield(making)
    except asyncio.CancelledError:
        await to_the_end(_release(making))
        raise
    except (SandboxUnavailable, OSError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)  # an OSError's str has host paths
        summary = f"cannot sandbox {command.label}: {reason}"
        raise _failed(emit, command.step, "sandbox_unavailable", summary, None) from None


async def _release(making: asyncio.Future[Jail]) -> None:
    await asyncio.wait({making})
    if not making.cancelled() and making.exception() is None:
        await asyncio.to_thread(making.result().close)


async def _supervised(
    jail: Jail, output: BuildOutput, command: _Command, workspace: Path, limits: SandboxLimits
) -> int | None:
    """The step's exit code (None: out of time), with the write watchdog beside it when there is a limit.

    A step ended by the write limit has what it added removed again: the disk it filled is given back.
    """
    if not limits.write_bytes:
        return await run_in_group(jail, output, command.timeout_s)
    before = await asyncio.to_thread(tree_paths, workspace)
    watchdog = asyncio.create_task(watch_growth(workspace, limits.write_bytes, lambda: output.end_for("write_bytes")))
    try:
        exit_code = await run_in_group(jail, output, command.timeout_s)
    finally:
        watchdog.cancel()
        await asyncio.wait({watchdog})
    if output.limit == "write_bytes":
        await to_thread_to_the_end(remove_added, workspace, before)
    return exit_code


def _limit_summary(command: _Command, limit: str, settings: BuildSettings) -> str:
    describe = _LIMIT_VALUES.get(limit)
    value = describe(settings.sandbox.limits) if describe is not None else ""
    return f"{command.label} was ended by the build's {limit.replace('_', ' ')} limit{value}"


_LIMIT_VALUES: dict[str, Callable[[SandboxLimits], str]] = {
    "cpu": lambda limits: f" ({limits.cpu_s} CPU seconds per process)",
    "memory": lambda limits: f" ({limits.memory_bytes // _MIB} MiB)",
    "processes": lambda limits: f" ({limits.processes} at once)",
    "file_size": lambda limits: f" ({limits.file_bytes // _MIB} MiB per file)",
    "write_bytes": lambda limits: f" ({limits.write_bytes // _MIB} MiB written)",
}


def _step_env(*, network: bool) -> dict[str, str]:
    """The step's variables: no colours or notices, the operator's npm settings, and a proxy for the install."""
    operator = {key: value for key, value in os.environ.items() if key.lower().startswith("npm_config_")}
    proxies = {key: value for key, value in os.environ.items() if network and key.lower() in _PROXY_ENV}
    return {**operator, **proxies, **_CHILD_ENV}


def _registry() -> str:
    # npm reads its variables in either case; the operator's registry is the one installs use.
    found = (value for key, value in os.environ.items() if key.lower() == "npm_config_registry" and value)
    return next(found, DEFAULT_REGISTRY)


def _npm_cache(settings: BuildSettings) -> Path:
    """The install's download cache, shared by all installs (only npm itself writes it): made if missing."""
    cache = settings.npm_cache or Path.home() / ".npm"
    cache.mkdir(parents=True, exist_ok=True)
    return cache
