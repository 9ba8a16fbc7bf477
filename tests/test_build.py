"""The build after a vue_project run, with real npm and node processes (no mocks).

Every project here has no dependencies, so ``npm install`` needs no network; its scripts are
small node programs that stand in for vite. Process checks read /proc: a zombie (a killed child
not yet reaped by its new parent) counts as dead, since it runs nothing and holds nothing.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from app.builder import (
    BUILD_DIR_PREFIX,
    INSTALL_STAMP,
    BuildFailed,
    BuildResult,
    discard_build,
    publish_build,
    run_build,
)
from app.control.cancel import RunCancelled, StopGate, StopReason
from app.control.events import BuildEvent
from app.sandbox import SANDBOX_KINDS, SandboxKind, SandboxSettings
from app.settings import BuildSettings
from tests.process_kit import (
    DEAD_WITHIN_S,
    assert_all_dead,
    assert_no_sandbox_left,
    host_pids,
    is_alive,
    no_process_left,
    outer_leader,
    proc_state,
    session_members,
)

SETTINGS = BuildSettings(install_timeout_s=60.0, build_timeout_s=60.0)
HANG_TIMEOUT_S = 30.0  # only there to turn a hang into a failure

Scenario = Callable[[Path, BuildSettings], Coroutine[Any, Any, None]]

# Stands in for vite: writes <outDir>/index.html and prints what it did.
GOOD_BUILD = r"""
const fs = require('fs');
const path = require('path');
const out = process.argv[process.argv.indexOf('--outDir') + 1];
if (!process.argv.includes('--emptyOutDir')) process.exit(9);
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, 'index.html'), '<h1>' + fs.readFileSync('tag.txt', 'utf8') + '</h1>');
console.log('compiled 1 file');
console.log(`env CI=${process.env.CI} NO_COLOR=${process.env.NO_COLOR} FORCE_COLOR=${process.env.FORCE_COLOR}`);
console.log('wrote index.html');
"""

FAILING_BUILD = r"""
for (let i = 1; i <= 100; i++) console.log('output line ' + String(i).padStart(3, '0'));
process.exit(3);
"""

NO_SITE_BUILD = "console.log('forgot the site');\n"

# Prints "ready" once its pids are on disk, then waits forever with two grandchildren that keep
# the output pipe open (stdio inherited, not detached: they stay in the build's process group).
HANGING_BUILD = r"""
const fs = require('fs');
const { spawn } = require('child_process');
const kids = [0, 1].map(() => spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'inherit' }));
fs.writeFileSync('pids.json', JSON.stringify({ script: process.pid, children: kids.map((k) => k.pid) }));
console.log('ready');
setInterval(() => {}, 1000);
"""

# Exits 0 but leaves a watcher behind that still holds the output pipe.
WATCHER_BUILD = r"""
const fs = require('fs');
const path = require('path');
const { spawn } = require('child_process');
const out = process.argv[process.argv.indexOf('--outDir') + 1];
fs.writeFileSync(path.join(out, 'index.html'), '<h1>ok</h1>');
const watcher = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'inherit' });
watcher.unref();
fs.writeFileSync('pids.json', JSON.stringify({ script: process.pid, children: [watcher.pid] }));
console.log('built, watching');
"""

NOISY_BUILD = r"""
const fs = require('fs');
const path = require('path');
const out = process.argv[process.argv.indexOf('--outDir') + 1];
fs.writeFileSync(path.join(out, 'index.html'), 'ok');
console.log('\x1b[1;31mred\x1b[0m and \x1b]0;title\x07plain');
console.log('x'.repeat(5000));
console.log('y'.repeat(200000));
process.stdout.write('crlf line\r\n');
process.stdout.write('last line without newline');
"""


# -- helpers -----------------------------------------------------------------------------


@dataclass
class Recorder:
    """The emit callback: keeps every event and signals when a given output line appears."""

    wait_line: str | None = None
    events: list[BuildEvent] = field(default_factory=list)
    seen: asyncio.Event = field(default_factory=asyncio.Event)
    # With a workspace: at the wait line, the live script's pids.json, as our pids (the script
    # writes the pids it knows, which inside a sandbox are its PID namespace's).
    workspace: Path | None = None
    sandboxed: bool = True
    pids: set[int] = field(default_factory=set)

    def __call__(self, event: BuildEvent) -> None:
        self.events.append(event)
        if event.status == "output" and event.line == self.wait_line:
            if self.workspace is not None:
                self.pids = host_pids(read_pids(self.workspace), sandboxed=self.sandboxed)
            self.seen.set()

    def steps(self) -> list[tuple[str, str]]:
        return [(e.step, e.status) for e in self.events if e.status != "output"]

    def lines(self, step: str = "build") -> list[str]:
        return [e.line for e in self.events if e.step == step and e.status == "output"]

    def last(self, step: str, status: str) -> BuildEvent:
        return [e for e in self.events if (e.step, e.status) == (step, status)][-1]


def make_project(root: Path, build_js: str | None = GOOD_BUILD, scripts: dict[str, str] | None = None) -> Path:
    workspace = root / "ws"
    workspace.mkdir()
    all_scripts = {"build": "node build.js"} if build_js is not None else {}
    all_scripts.update(scripts or {})
    package = {"name": "site", "version": "1.0.0", "private": True, "scripts": all_scripts}
    (workspace / "package.json").write_text(json.dumps(package, indent=2))
    if build_js is not None:
        (workspace / "build.js").write_text(build_js)
    (workspace / "tag.txt").write_text("first")
    return workspace


def build_dirs(workspace: Path) -> list[Path]:
    return sorted(workspace.glob(f"{BUILD_DIR_PREFIX}*"))


def read_pids(workspace: Path) -> set[int]:
    pids = json.loads((workspace / "pids.json").read_text())
    return {pids["script"], *pids["children"]}


@pytest.fixture(autouse=True)
def _no_process_left(tmp_path: Path) -> Iterator[None]:
    yield from no_process_left(tmp_path)


async def build(
    workspace: Path, settings: BuildSettings = SETTINGS, recorder: Recorder | None = None
) -> tuple[BuildResult, Recorder]:
    recorder = recorder or Recorder()
    async with asyncio.timeout(HANG_TIMEOUT_S):
        result = await run_build(workspace, settings, recorder, StopGate())
    return result, recorder


async def build_fails(
    workspace: Path, settings: BuildSettings = SETTINGS, recorder: Recorder | None = None
) -> tuple[BuildFailed, Recorder]:
    recorder = recorder or Recorder()
    with pytest.raises(BuildFailed) as caught:
        async with asyncio.timeout(HANG_TIMEOUT_S):
            await run_build(workspace, settings, recorder, StopGate())
    return caught.value, recorder


# -- nothing to build --------------------------------------------------------------------


async def test_disabled_builds_are_skipped(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    result, recorder = await build(workspace, BuildSettings(enabled=False))
    assert result == BuildResult(None, False, "disabled")
    assert recorder.events == [BuildEvent("build", "skipped", line="builds are disabled")]
    assert not (workspace / "node_modules").exists()


async def test_no_package_json_is_skipped(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    (workspace / "package.json").unlink()
    result, recorder = await build(workspace)
    assert result == BuildResult(None, False, "no package.json")
    assert recorder.steps() == [("build", "skipped")]


async def test_no_build_script_is_skipped(tmp_path: Path) -> None:
    workspace = make_project(tmp_path, build_js=None, scripts={"dev": "node dev.js"})
    result, recorder = await build(workspace)
    assert result == BuildResult(None, False, "no build script")
    assert recorder.steps() == [("build", "skipped")]
    assert not (workspace / "package-lock.json").exists()  # npm never ran


async def test_broken_package_json_fails_the_build(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    (workspace / "package.json").write_text('{"scripts": {"build": "node build.js"},,}')
    failure, recorder = await build_fails(workspace)
    assert failure.code == "build_failed"
    assert "package.json" in failure.message
    assert recorder.steps() == [("build", "failed")]


# -- a good build ------------------------------------------------------------------------


async def test_build_streams_events_and_publish_swaps_dist(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    (workspace / "dist").mkdir()
    (workspace / "dist" / "index.html").write_text("previous")
    result, recorder = await build(workspace)

    assert recorder.steps() == [
        ("install", "started"),
        ("install", "finished"),
        ("build", "started"),
        ("build", "finished"),
    ]
    first, last = recorder.events.index(BuildEvent("build", "started", line="npm run build")), len(recorder.events) - 1
    build_lines = [e.line for e in recorder.events[first:last] if e.status == "output"]
    assert build_lines.index("compiled 1 file") < build_lines.index("wrote index.html")
    assert "env CI=1 NO_COLOR=1 FORCE_COLOR=0" in build_lines
    finished = recorder.last("build", "finished")
    assert finished.exit_code == 0
    assert finished.seconds is not None
    assert finished.seconds > 0

    assert result.installed
    assert result.skipped_reason is None
    assert result.out_dir is not None
    assert result.out_dir.parent == workspace
    assert result.out_dir.name.startswith(BUILD_DIR_PREFIX)
    assert (result.out_dir / "index.html").read_text() == "<h1>first</h1>"
    assert (workspace / "dist" / "index.html").read_text() == "previous"  # served until the swap

    publish_build(workspace, result.out_dir)
    assert (workspace / "dist" / "index.html").read_text() == "<h1>first</h1>"
    assert build_dirs(workspace) == []  # neither the temp dir nor the old dist is left


async def test_publish_without_a_previous_dist(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    result, _ = await build(workspace)
    assert result.out_dir is not None
    publish_build(workspace, result.out_dir)
    assert (workspace / "dist" / "index.html").is_file()
    assert build_dirs(workspace) == []


async def test_install_runs_only_when_dependencies_change(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    first, _ = await build(workspace)
    assert first.installed
    assert (workspace / "node_modules" / INSTALL_STAMP).is_file()

    second, recorder = await build(workspace)
    assert not second.installed
    assert recorder.events[0] == BuildEvent("install", "skipped", line="dependencies unchanged")
    assert ("install", "started") not in recorder.steps()

    package = json.loads((workspace / "package.json").read_text())
    (workspace / "package.json").write_text(json.dumps({**package, "description": "changed"}))
    third, recorder = await build(workspace)
    assert third.installed
    assert recorder.steps()[:2] == [("install", "started"), ("install", "finished")]


async def test_output_lines_are_cleaned_and_cut(tmp_path: Path) -> None:
    workspace = make_project(tmp_path, NOISY_BUILD)
    _, recorder = await build(workspace, BuildSettings(max_line_chars=100))
    lines = recorder.lines()
    assert "red and plain" in lines
    assert "crlf line" in lines
    assert lines[-1] == "last line without newline"
    for char in "xy":
        (cut,) = [line for line in lines if line.startswith(char * 10)]
        assert len(cut) == 100
        assert cut.endswith("…")
    assert all("\x1b" not in line and len(line) <= 100 for line in lines)


# -- failures ----------------------------------------------------------------------------


async def test_failing_build_reports_the_tail_and_leaves_nothing(tmp_path: Path) -> None:
    workspace = make_project(tmp_path, FAILING_BUILD)
    failure, recorder = await build_fails(workspace, BuildSettings(tail_lines=20))
    assert failure.code == "build_failed"
    assert "exited with code 3" in failure.message
    assert failure.message.endswith(failure.tail)
    assert "output line 100" in failure.tail
    assert "output line 001" not in failure.message
    assert len(failure.tail.splitlines()) <= 20
    failed = recorder.last("build", "failed")
    assert failed.exit_code == 3
    assert recorder.steps()[-1] == ("build", "failed")
    assert build_dirs(workspace) == []


async def test_build_without_index_html_fails(tmp_path: Path) -> None:
    workspace = make_project(tmp_path, NO_SITE_BUILD)
    failure, _ = await build_fails(workspace)
    assert failure.code == "build_failed"
    assert "index.html" in failure.message
    assert "forgot the site" in failure.tail
    assert build_dirs(workspace) == []


async def test_failing_install_stops_before_the_build(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A registry that refuses connections (port 9, discard), asked once: npm install fails fast.
    monkeypatch.setenv("npm_config_registry", "http://127.0.0.1:9/")
    monkeypatch.setenv("npm_config_fetch_retries", "0")
    workspace = make_project(tmp_path)
    package = json.loads((workspace / "package.json").read_text())
    (workspace / "package.json").write_text(json.dumps({**package, "dependencies": {"left-pad": "^1.3.0"}}))
    failure, recorder = await build_fails(workspace)
    assert failure.code == "install_failed"
    assert recorder.steps() == [("install", "started"), ("install", "failed")]
    assert recorder.last("install", "failed").exit_code != 0
    assert not (workspace / "node_modules" / INSTALL_STAMP).exists()
    assert build_dirs(workspace) == []


async def test_missing_npm(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    failure, recorder = await build_fails(workspace, BuildSettings(npm=str(tmp_path / "no-such-npm")))
    assert failure.code == "npm_missing"
    assert recorder.steps() == [("install", "started"), ("install", "failed")]


async def timeout_kills_the_group(tmp_path: Path, settings: BuildSettings) -> None:
    workspace = make_project(tmp_path, HANGING_BUILD)
    recorder = watching(workspace, "ready", settings)
    failure, _ = await build_fails(workspace, replace(settings, build_timeout_s=1.0), recorder)
    assert failure.code == "build_timeout"
    assert "ready" in failure.tail
    assert recorder.last("build", "failed").exit_code is None
    assert len(recorder.pids) == 3  # the script and both grandchildren were seen alive
    await assert_all_dead(recorder.pids)
    assert build_dirs(workspace) == []


async def children_left_after_a_good_build_are_killed(tmp_path: Path, settings: BuildSettings) -> None:
    workspace = make_project(tmp_path, WATCHER_BUILD)
    started = time.monotonic()
    result, recorder = await build(workspace, settings, watching(workspace, "built, watching", settings))
    # The watcher holds the output pipe: without the group kill, the build would wait for it.
    assert time.monotonic() - started < 10.0
    assert result.out_dir is not None
    if settings.sandbox.kind == "none":
        assert len(recorder.pids) >= 1  # the watcher, seen alive (the script may have exited)
        await assert_all_dead(recorder.pids)
    else:
        # In the sandbox the watcher may already be dead when its line is read: the PID namespace
        # ends with the script. What must hold is that nothing of the build is left.
        await assert_no_sandbox_left()


def watching(workspace: Path, line: str, settings: BuildSettings) -> Recorder:
    return Recorder(wait_line=line, workspace=workspace, sandboxed=settings.sandbox.kind != "none")


# -- stop --------------------------------------------------------------------------------


async def test_closed_gate_starts_no_process(tmp_path: Path) -> None:
    workspace = make_project(tmp_path)
    gate = StopGate()
    gate.close(StopReason.USER_STOP)
    recorder = Recorder()
    with pytest.raises(RunCancelled):
        await run_build(workspace, SETTINGS, recorder, gate)
    assert recorder.events == []
    assert not (workspace / "package-lock.json").exists()
    assert not (workspace / "node_modules").exists()
    assert build_dirs(workspace) == []


async def stop_kills_the_whole_group(tmp_path: Path, settings: BuildSettings) -> None:
    workspace = make_project(tmp_path, HANGING_BUILD)
    gate, recorder = StopGate(), watching(workspace, "ready", settings)
    task = asyncio.create_task(run_build(workspace, settings, recorder, gate))
    async with asyncio.timeout(HANG_TIMEOUT_S):
        await recorder.seen.wait()

    script_pids = recorder.pids
    session = proc_state(next(iter(script_pids)))  # all of them share npm's session
    assert session is not None
    sid = session[1]
    assert sid != os.getsid(0)  # npm leads a session of its own
    members = session_members(sid)
    assert {sid, *script_pids} <= members  # npm, the script and both grandchildren
    leader = outer_leader(next(iter(script_pids)))  # npm, or the sandbox around it

    gate.close(StopReason.USER_STOP)  # what a stop does: close the gate, then cancel the task
    task.cancel()
    stopped = time.monotonic()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert time.monotonic() - stopped < DEAD_WITHIN_S
    assert proc_state(leader) is None  # killed and reaped before the task ended
    assert not any(is_alive(pid) for pid in members)  # the group's output ended: all of it exited
    await assert_all_dead(members)
    assert build_dirs(workspace) == []
    assert ("build", "finished") not in recorder.steps()


@pytest.mark.parametrize("kind", SANDBOX_KINDS)
async def test_a_second_stop_still_waits_for_the_group(tmp_path: Path, kind: SandboxKind) -> None:
    settings = with_sandbox(kind)
    workspace = make_project(tmp_path, HANGING_BUILD)
    recorder = watching(workspace, "ready", settings)
    task = asyncio.create_task(run_build(workspace, settings, recorder, StopGate()))
    async with asyncio.timeout(HANG_TIMEOUT_S):
        await recorder.seen.wait()
    leader = outer_leader(next(iter(recorder.pids)))
    task.cancel()
    await asyncio.sleep(0)  # one turn of the loop: the task is now waiting for the killed group
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert proc_state(leader) is None  # reaped before the task ended, not merely signalled
    await assert_all_dead(recorder.pids)
    assert build_dirs(workspace) == []


def with_sandbox(kind: SandboxKind) -> BuildSettings:
    return replace(SETTINGS, sandbox=SandboxSettings(kind=kind))


GROUP_SCENARIOS = [timeout_kills_the_group, children_left_after_a_good_build_are_killed, stop_kills_the_whole_group]


@pytest.mark.parametrize("kind", SANDBOX_KINDS)
@pytest.mark.parametrize("scenario", GROUP_SCENARIOS)
async def test_process_group(tmp_path: Path, scenario: Scenario, kind: SandboxKind) -> None:
    await scenario(tmp_path, with_sandbox(kind))


@pytest.mark.parametrize("kind", SANDBOX_KINDS)
@pytest.mark.parametrize("scenario", GROUP_SCENARIOS)
def test_process_group_on_uvloop(tmp_path: Path, scenario: Scenario, kind: SandboxKind) -> None:
    """uvicorn runs the server on uvloop when it is installed: its subprocess support must do the same."""
    uvloop = pytest.importorskip("uvloop")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(scenario(tmp_path, with_sandbox(kind)))


async def test_stop_while_npm_is_being_started(tmp_path: Path) -> None:
    """A cancellation that lands during process creation still kills what was created."""
    workspace = make_project(tmp_path)
    recorder = Recorder()

    def emit(event: BuildEvent) -> None:
        recorder(event)
        if (event.step, event.status) == ("build", "started"):
            task.cancel()  # delivered at the next await: the creation of npm

    task = asyncio.create_task(run_build(workspace, SETTINGS, emit, StopGate()))
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(HANG_TIMEOUT_S):
            await task
    assert recorder.steps()[-1] == ("build", "started")
    assert build_dirs(workspace) == []
    # The autouse fixture checks that npm, created and then killed, is not left running.


def test_discard_build_removes_only_temp_dirs(tmp_path: Path) -> None:
    (tmp_path / f"{BUILD_DIR_PREFIX}0123").mkdir()
    (tmp_path / f"{BUILD_DIR_PREFIX}0123" / "index.html").write_text("half")
    (tmp_path / f"{BUILD_DIR_PREFIX}replaced-4567").mkdir()
    (tmp_path / "dist").mkdir()
    (tmp_path / "src.js").write_text("keep")
    discard_build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dist", "src.js"]


async def test_build_scripts_get_no_server_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scripts the model wrote run with what npm needs, not the server's environment."""
    monkeypatch.setenv("RUNFORGE_LLM_API_KEY", "sk-secret-upstream-key")
    monkeypatch.setenv("RUNFORGE_DATABASE_URL", "postgresql://user:pw@db/runforge")
    probe = (
        "console.log('runforge keys=' + Object.keys(process.env).filter(k => k.startsWith('RUNFORGE')).join(','));\n"
        "console.log('has PATH=' + Boolean(process.env.PATH));\n"
    )
    leak_js = GOOD_BUILD.replace("console.log(", probe + "console.log(", 1)
    workspace = make_project(tmp_path, leak_js)
    _, recorder = await build(workspace)
    lines = recorder.lines()
    assert "runforge keys=" in lines  # none
    assert "has PATH=true" in lines  # npm and node still find what they need
    assert not any("sk-secret-upstream-key" in line for line in lines)
