"""Stop modes (immediate, after_step, rollback) and stops around the build, over real sockets.

Everything is real: the server thread, the simulator, npm and node. ``tool_delay_s`` is the
fault-injection setting that makes every tool call take that long, so "a tool call in progress"
is a deterministic moment to stop at. Build projects have no dependencies (``npm install`` needs
no network); their ``build.js`` stands in for vite. Process checks read /proc: a zombie counts
as dead, since it runs nothing and holds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.builder import BUILD_DIR_PREFIX, run_build
from app.control.cancel import StopGate
from app.control.events import BuildEvent
from app.settings import BuildSettings, Settings
from app.simulator import SCENARIOS, Params, Turn
from tests.process_kit import (
    assert_all_dead,
    is_alive,
    no_process_left,
    outer_leader,
    proc_state,
    sandboxed_pid_map,
    session_members,
)
from tests.support import HANG_TIMEOUT_S, Event, ServerThread, collect, gen_url, open_stream, wait_for_status

TOOL_DELAY_S = 0.5  # every tool call takes this long on the `slow` server: a stop lands inside one
BUILDS = BuildSettings(enabled=True, build_timeout_s=60, install_timeout_s=120)
FOUR_FILES = "[sim:tools_midstream files=4]"
FAST = "[sim:long_text pace=20 tokens=5000]"  # 100 s of text: a stop that waited for the step would hang
MODES = ("immediate", "after_step", "rollback")


# -- harness -----------------------------------------------------------------------------


@dataclass
class Site:
    """A server of its own (own settings), a signed-in client and one vue_project app."""

    server: ServerThread
    client: httpx.AsyncClient
    token: str
    app_id: str

    @property
    def workspace(self) -> Path:
        return self.server.settings.workspaces_dir / self.app_id


@contextlib.asynccontextmanager
async def open_site(settings: Settings, token: str | None = None, app_id: str | None = None) -> AsyncIterator[Site]:
    """Start a server; sign in (a new user, or ``token``) and create an app (or use ``app_id``)."""
    server = ServerThread(settings).start()
    try:
        token = token or server.add_user("alice")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30.0) as client:
            yield Site(server, client, token, app_id or await new_app(client))
    finally:
        server.stop()


async def new_app(client: httpx.AsyncClient) -> str:
    response = await client.post("/apps", json={"name": "stop modes", "codeGenType": "vue_project"})
    assert response.status_code == 201, response.text
    app_id: str = response.json()["id"]
    return app_id


@pytest.fixture
async def slow(settings: Settings) -> AsyncIterator[Site]:
    async with open_site(settings.with_overrides(tool_delay_s=TOOL_DELAY_S)) as site:
        yield site


@pytest.fixture
async def builds(settings: Settings) -> AsyncIterator[Site]:
    async with open_site(settings.with_overrides(build=BUILDS)) as site:
        yield site


@pytest.fixture(autouse=True)
def _no_process_left(tmp_path: Path) -> Iterator[None]:
    yield from no_process_left(tmp_path)


async def stop(client: httpx.AsyncClient, run_id: str, mode: str | None = None) -> httpx.Response:
    body = {"runId": run_id} if mode is None else {"runId": run_id, "mode": mode}
    return await client.post("/app/chat/stop", json=body)


def is_text(event: Event) -> bool:
    return event.event == "message"


def named(events: list[Event]) -> list[str]:
    """Event names without the text deltas."""
    return [e.event for e in events if e.event != "message"]


def files_in(root: Path) -> dict[str, bytes]:
    """Every file under ``root``, by relative path, with its bytes."""
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def midstream_content(n: int) -> str:
    """What ``tools_midstream`` writes into file_<n>.txt (the simulator's own scenario, asked directly)."""
    reply = SCENARIOS["tools_midstream"].reply(Turn(n - 1, Params(files=n)))
    content: str = json.loads(reply.tool_calls[0].arguments)["content"]
    return content


async def checkpoints_of(client: httpx.AsyncClient, app_id: str, run_id: str) -> list[dict[str, Any]]:
    response = await client.get(f"/apps/{app_id}/checkpoints")
    assert response.status_code == 200
    return [c for c in response.json() if c["runId"] == run_id]


async def finished(site: Site, run_id: str, status: str) -> dict[str, Any]:
    """The run's public view once it has ended with ``status`` (its task is over)."""
    return await wait_for_status(site.client, run_id, status)


# -- processes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BuildGroup:
    """A hanging build's processes: its leader (the sandbox the server spawned, or npm when
    unconfined), npm's session, the script and its two grandchildren."""

    leader: int
    members: frozenset[int]


def hanging_group(workspace: Path) -> BuildGroup:
    pids = json.loads((workspace / "pids.json").read_text())
    inner = {pids["script"], *pids["children"]}  # as the script knows them: its PID namespace's
    ours = sandboxed_pid_map(inner) or {pid: pid for pid in inner}  # none in a namespace: unconfined
    assert set(ours) == inner, f"the build script and its children are not all running: {ours}"
    script, script_pids = ours[pids["script"]], set(ours.values())
    state = proc_state(script)
    assert state is not None, "the build script is not running"
    sid = state[1]
    assert sid != os.getsid(0)  # npm leads a session of its own
    members = session_members(sid)
    assert {sid, *script_pids} <= members  # npm, the shell's exec, the script and both grandchildren
    leader = outer_leader(script)
    return BuildGroup(leader, frozenset(members | {leader}))


# -- build projects ----------------------------------------------------------------------

# Stands in for vite: parses --outDir and writes <outDir>/index.html from the page the agent wrote.
GOOD_BUILD = r"""
const fs = require('fs');
const path = require('path');
const out = process.argv[process.argv.indexOf('--outDir') + 1];
fs.mkdirSync(out, { recursive: true });
fs.writeFileSync(path.join(out, 'index.html'), '<!-- built -->\n' + fs.readFileSync('index.html', 'utf8'));
console.log('bundling index.html');
console.log('built 1 page');
"""

FAILING_BUILD = r"""
for (let i = 1; i <= 60; i++) console.log('compile step ' + String(i).padStart(3, '0'));
console.log('error: cannot resolve ./missing.js');
process.exit(2);
"""

# With hang.flag present: two grandchildren that keep the output pipe open (stdio inherited, not
# detached: they stay in npm's process group), pids on disk, "ready", then it waits forever.
# Without it: a good build.
HANGING_BUILD = r"""
const fs = require('fs');
const path = require('path');
const { spawn } = require('child_process');
if (fs.existsSync('hang.flag')) {
  const kids = [0, 1].map(() => spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)'], { stdio: 'inherit' }));
  fs.writeFileSync('pids.json', JSON.stringify({ script: process.pid, children: kids.map((k) => k.pid) }));
  console.log('ready');
  setInterval(() => {}, 1000);
} else {
  const out = process.argv[process.argv.indexOf('--outDir') + 1];
  fs.writeFileSync(path.join(out, 'index.html'), '<!-- built -->\n' + fs.readFileSync('index.html', 'utf8'));
  console.log('built 1 page');
}
"""

# Any npm process leaves a mark: the install its package-lock.json (it runs no scripts), the build this.
MARKING_BUILD = "require('fs').writeFileSync('build.marker', 'npm run build ran');\n"


def prepare_project(workspace: Path, build_js: str, **scripts: str) -> None:
    """A package.json with no dependencies and a build script, written before the run."""
    workspace.mkdir(parents=True, exist_ok=True)
    package = {"name": "site", "version": "1.0.0", "private": True, "scripts": {"build": "node build.js", **scripts}}
    (workspace / "package.json").write_text(json.dumps(package, indent=2))
    (workspace / "build.js").write_text(build_js)


def build_steps(events: list[Event]) -> list[tuple[str, str]]:
    return [(e.data["step"], e.data["status"]) for e in events if e.event == "build" and e.data["status"] != "output"]


def build_lines(events: list[Event]) -> list[str]:
    return [e.data["line"] for e in events if e.event == "build" and e.data["status"] == "output"]


def is_ready(event: Event) -> bool:
    return event.event == "build" and event.data["status"] == "output" and event.data.get("line") == "ready"


def temp_build_dirs(workspace: Path) -> list[str]:
    return sorted(p.name for p in workspace.glob(f"{BUILD_DIR_PREFIX}*"))


# == 1. immediate ==============================================================================


async def test_immediate_stop_during_a_tool_call_skips_it(slow: Site) -> None:
    run_id = "r-imm-call"
    url = gen_url(slow.app_id, f"files {FOUR_FILES}", runId=run_id)
    async with open_stream(slow.client, "GET", url) as (_, events):
        seen = await collect(events, until=lambda e: e.event == "tool_call")
        response = await stop(slow.client, run_id)  # no mode: immediate is the default
        rest = await collect(events)

    assert response.status_code == 202
    assert response.json() == {"runId": run_id, "status": "stopping", "mode": "immediate"}
    # The call in progress never answered: the stop did not wait for it.
    assert named(rest) == ["interrupted"]
    assert rest[-1].data == {"reason": "user_stop", "mode": "immediate", "runId": run_id}
    assert seen[-1].data["args"]["path"] == "file_1.txt"

    row = await finished(slow, run_id, "interrupted")
    assert row["toolCallsExecuted"] == 0
    assert not (slow.workspace / "file_1.txt").exists()  # it was still in its delay
    records = slow.server.simulator.recorder.records(run_id)
    assert len(records) == 1  # no further LLM request
    assert records[0].finished_at is not None


async def test_immediate_stop_after_a_tool_result_keeps_the_file_uncommitted(slow: Site) -> None:
    run_id = "r-imm-result"
    url = gen_url(slow.app_id, f"files {FOUR_FILES}", runId=run_id)
    async with open_stream(slow.client, "GET", url) as (_, events):
        seen = await collect(events, until=lambda e: e.event == "tool_result")
        response = await stop(slow.client, run_id, "immediate")
        rest = await collect(events)

    assert response.status_code == 202
    assert response.json() == {"runId": run_id, "status": "stopping", "mode": "immediate"}
    assert seen[-1].data["ok"] is True
    assert rest[-1].event == "interrupted"
    assert rest[-1].data == {"reason": "user_stop", "mode": "immediate", "runId": run_id}
    assert "tool_result" not in named(rest)

    row = await finished(slow, run_id, "interrupted")
    assert row["toolCallsExecuted"] == 1
    # The executed call's file stays, complete; the next call never ran.
    assert (slow.workspace / "file_1.txt").read_text() == midstream_content(1)
    assert not (slow.workspace / "file_2.txt").exists()
    # ... but nothing of the run is committed: no checkpoint at all (a new app's empty baseline
    # is only written with its first completed run).
    assert await checkpoints_of(slow.client, slow.app_id, run_id) == []
    assert (await slow.client.get(f"/apps/{slow.app_id}/messages")).json() == []


# == 2. after_step =============================================================================


async def test_after_step_lets_the_tool_call_in_progress_finish_then_stops(slow: Site) -> None:
    run_id = "r-after"
    url = gen_url(slow.app_id, f"files {FOUR_FILES}", runId=run_id)
    async with open_stream(slow.client, "GET", url) as (_, events):
        seen = await collect(events, until=lambda e: e.event == "tool_call")
        call = seen[-1]
        response = await stop(slow.client, run_id, "after_step")
        rest = await collect(events)

    assert response.status_code == 202
    assert response.json() == {"runId": run_id, "status": "stopping", "mode": "after_step"}
    # The call finished (ok), then the run stopped; the stream ends there.
    assert [e.event for e in rest] == ["tool_result", "interrupted"]
    assert rest[0].data["callId"] == call.data["callId"]
    assert rest[0].data["ok"] is True
    assert rest[1].data == {"reason": "user_stop", "mode": "after_step", "runId": run_id}

    row = await finished(slow, run_id, "interrupted")
    assert row["stopReason"] == "user_stop"
    assert row["toolCallsExecuted"] == 1
    assert (slow.workspace / "file_1.txt").read_text() == midstream_content(1)
    assert not (slow.workspace / "file_2.txt").exists()
    assert len(slow.server.simulator.recorder.records(run_id)) == 1  # no next LLM request


async def test_after_step_while_the_model_streams_text_stops_at_once(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    run_id = "r-after-text"
    async with open_stream(client, "GET", gen_url(app_id, f"essay {FAST}", runId=run_id)) as (_, events):
        await collect(events, until=is_text)
        response = await stop(client, run_id, "after_step")
        rest = await collect(events)  # the step has ~100 s to go: waiting for it would hang here

    assert response.status_code == 202
    assert response.json() == {"runId": run_id, "status": "stopping", "mode": "after_step"}
    assert rest[-1].data == {"reason": "user_stop", "mode": "after_step", "runId": run_id}
    assert named(rest) == ["interrupted"]
    records = await server.sim_records(run_id, lambda rs: rs[-1].disconnected_at is not None)
    assert len(records) == 1
    assert records[0].finished_at is None  # the upstream was closed mid-answer
    assert (await wait_for_status(client, run_id, "interrupted"))["stopReason"] == "user_stop"


async def test_after_step_skips_the_other_calls_of_the_same_model_turn(slow: Site) -> None:
    """codegen's second turn asks for style.css and script.js: after_step during the first lets
    it finish and skips the second."""
    run_id = "r-after-turn"
    url = gen_url(slow.app_id, "a site [sim:codegen]", runId=run_id)
    async with open_stream(slow.client, "GET", url) as (_, events):
        seen = await collect(events, until=lambda e: e.event == "tool_call" and e.data["args"]["path"] == "style.css")
        response = await stop(slow.client, run_id, "after_step")
        rest = await collect(events)

    assert response.status_code == 202
    assert [e.event for e in rest] == ["tool_result", "interrupted"]
    assert rest[0].data["callId"] == seen[-1].data["callId"]
    assert rest[1].data["mode"] == "after_step"
    row = await finished(slow, run_id, "interrupted")
    assert (row["toolCallsExecuted"], row["toolCallsSkipped"]) == (2, 1)
    assert sorted(p.name for p in slow.workspace.iterdir()) == ["index.html", "style.css"]
    assert len(slow.server.simulator.recorder.records(run_id)) == 2


@pytest.mark.parametrize("override", ["client_disconnect", "superseded"])
async def test_a_pending_after_step_is_overridden_by_disconnect_and_supersede(slow: Site, override: str) -> None:
    run_id = f"r-pending-{override}"
    url = gen_url(slow.app_id, f"files {FOUR_FILES}", runId=run_id)
    async with open_stream(slow.client, "GET", url) as (_, events):
        await collect(events, until=lambda e: e.event == "tool_call")
        deferred = await stop(slow.client, run_id, "after_step")
        assert deferred.json() == {"runId": run_id, "status": "stopping", "mode": "after_step"}
        if override == "superseded":
            new_url = gen_url(slow.app_id, "new [sim:long_text tokens=20]", runId=f"{run_id}-new")
            async with open_stream(slow.client, "GET", new_url) as (_, new_events):
                rest = await collect(events)
                assert (await collect(new_events))[-1].event == "done"
            assert [e.event for e in rest] == ["interrupted"]  # no tool_result: the call was cut off
            assert rest[0].data == {"reason": "superseded", "mode": "immediate", "runId": run_id}
        # Leaving the block closes the stream: a client disconnect.

    row = await finished(slow, run_id, "interrupted")
    assert row["stopReason"] == override
    assert row["toolCallsExecuted"] == 0
    assert not (slow.workspace / "file_1.txt").exists()  # the deferred stop did not wait for the call
    assert len(slow.server.simulator.recorder.records(run_id)) == 1


# == 3. rollback ===============================================================================


async def test_rollback_restores_the_state_after_the_previous_run(settings: Settings) -> None:
    """The simulator picks a scenario from an app's first message, so the two runs of one app get
    different scenarios from two servers on the same data dir: the first serves model sim-codegen,
    the second the default model (a vue_project prompt: the vue_app scenario, which writes
    package.json, vite.config.js and index.html, then src/main.js and src/App.vue)."""
    codegen = settings.with_overrides(llm=dataclasses.replace(settings.llm, model="sim-codegen"))
    async with open_site(codegen) as first:
        url = gen_url(first.app_id, "a counter site", runId="r-before")
        async with open_stream(first.client, "GET", url) as (_, events):
            assert (await collect(events))[-1].event == "done"
        await finished(first, "r-before", "completed")
        assert [r.scenario for r in first.server.simulator.recorder.records("r-before")] == ["codegen"] * 3
        token, app_id = first.token, first.app_id
        after_first = files_in(first.workspace)
    assert set(after_first) == {"index.html", "style.css", "script.js"}

    async with open_site(settings.with_overrides(tool_delay_s=TOOL_DELAY_S), token, app_id) as second:
        run_id = "r-rollback"
        url = gen_url(app_id, "turn it into a vue project", runId=run_id)
        async with open_stream(second.client, "GET", url) as (_, events):
            seen = await collect(
                events, until=lambda e: e.event == "tool_result" and e.data["ok"] and "main.js" in e.data["summary"]
            )
            # The run has changed the workspace: a new directory, new files and a modified one.
            during = files_in(second.workspace)
            response = await stop(second.client, run_id, "rollback")
            rest = await collect(events)
        assert named(seen).count("tool_result") == 4
        assert {"package.json", "vite.config.js", "src/main.js"} <= set(during)
        assert during["index.html"] != after_first["index.html"]

        # Answered after the restore.
        assert response.status_code == 200
        assert response.json() == {"runId": run_id, "status": "interrupted", "mode": "rollback", "rolledBack": True}
        assert files_in(second.workspace) == after_first  # file set and bytes
        assert sorted(p.name for p in second.workspace.iterdir()) == ["index.html", "script.js", "style.css"]
        assert rest[-1].event == "interrupted"
        assert rest[-1].data == {"reason": "user_stop", "mode": "rollback", "runId": run_id}
        assert {r.scenario for r in second.server.simulator.recorder.records(run_id)} == {"vue_app"}

        assert (await finished(second, run_id, "interrupted"))["stopReason"] == "user_stop"
        assert [c["kind"] for c in await checkpoints_of(second.client, app_id, run_id)] == []  # base was r-before's
        messages = (await second.client.get(f"/apps/{app_id}/messages")).json()
        assert [m["runId"] for m in messages] == ["r-before", "r-before"]


async def test_rollback_of_a_first_run_empties_the_workspace(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    run_id = "r-rollback-first"
    workspace = server.settings.workspaces_dir / app_id
    url = gen_url(app_id, "files [sim:tools_midstream files=6 pace=3]", runId=run_id)
    async with open_stream(client, "GET", url) as (_, events):
        seen = await collect(events, until=lambda e: e.event == "tool_result" and "file_2" in e.data["summary"])
        written = files_in(workspace)
        response = await client.post(f"/runs/{run_id}/stop", params={"mode": "rollback"})  # the path alias
        rest = await collect(events)

    assert named(seen).count("tool_result") == 2
    assert {"file_1.txt", "file_2.txt"} <= set(written)
    assert response.status_code == 200
    assert response.json() == {"runId": run_id, "status": "interrupted", "mode": "rollback", "rolledBack": True}
    assert list(workspace.iterdir()) == []
    assert rest[-1].data == {"reason": "user_stop", "mode": "rollback", "runId": run_id}
    assert (await wait_for_status(client, run_id, "interrupted"))["stopReason"] == "user_stop"


# == 4. a stop after a deferred after_step stop ================================================


@pytest.mark.parametrize("second_mode", ["immediate", "rollback"])
async def test_a_stop_after_a_deferred_after_step_takes_effect_at_once(slow: Site, second_mode: str) -> None:
    run_id = f"r-deferred-{second_mode}"
    url = gen_url(slow.app_id, f"files {FOUR_FILES}", runId=run_id)
    async with open_stream(slow.client, "GET", url) as (_, events):
        await collect(events, until=lambda e: e.event == "tool_call")
        deferred = await stop(slow.client, run_id, "after_step")
        now = await stop(slow.client, run_id, second_mode)
        rest = await collect(events)

    assert deferred.status_code == 202
    assert deferred.json() == {"runId": run_id, "status": "stopping", "mode": "after_step"}
    if second_mode == "rollback":
        assert now.status_code == 200
        assert now.json() == {"runId": run_id, "status": "interrupted", "mode": "rollback", "rolledBack": True}
    else:
        assert now.status_code == 202
        assert now.json() == {"runId": run_id, "status": "stopping", "mode": "immediate"}
    # The call in progress was cut off, not awaited: no tool_result, no file.
    assert [e.event for e in rest] == ["interrupted"]
    assert rest[0].data == {"reason": "user_stop", "mode": second_mode, "runId": run_id}
    row = await finished(slow, run_id, "interrupted")
    assert row["toolCallsExecuted"] == 0
    assert not (slow.workspace / "file_1.txt").exists()
    assert len(slow.server.simulator.recorder.records(run_id)) == 1


# == 5. validation =============================================================================


async def test_unknown_modes_and_foreign_stops_are_refused(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient, app_id: str
) -> None:
    run_id = "r-refuse"
    async with open_stream(client, "GET", gen_url(app_id, f"essay {FAST}", runId=run_id)) as (_, events):
        await collect(events, until=is_text)
        bad = [
            await client.post("/app/chat/stop", json={"runId": run_id, "mode": mode})
            for mode in ("sideways", "", "ROLLBACK", 1, None)
        ]
        bad.append(await client.post(f"/runs/{run_id}/stop", params={"mode": "sideways"}))
        foreign = [await other_client.post("/app/chat/stop", json={"runId": run_id, "mode": m}) for m in MODES]
        foreign += [await other_client.post(f"/runs/{run_id}/stop", params={"mode": m}) for m in MODES]
        foreign.append(await other_client.post("/app/chat/stop", json={"runId": run_id}))
        still = (await client.get(f"/runs/{run_id}")).json()
        assert (await stop(client, run_id)).status_code == 202
        rest = await collect(events)

    for response in bad:
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/json")
        assert response.json()["status"] == 400
        assert response.json()["error"] == "invalid_request"
    for response in foreign:
        assert response.status_code == 403, response.text
        assert response.json()["error"] == "forbidden"
    # None of them touched the run: it ran on until its owner stopped it.
    assert still["status"] == "running"
    assert still["stopRequestedAt"] is None
    assert rest[-1].data == {"reason": "user_stop", "mode": "immediate", "runId": run_id}


# == 6-10. builds through the HTTP API ==========================================================


async def test_build_after_a_completed_run_publishes_the_preview(builds: Site) -> None:
    prepare_project(builds.workspace, GOOD_BUILD)
    run_id = "r-build-ok"
    url = gen_url(builds.app_id, "a page [sim:exit_tool]", runId=run_id)
    async with open_stream(builds.client, "GET", url) as (_, events):
        seen = await collect(events)

    assert build_steps(seen) == [
        ("install", "started"),
        ("install", "finished"),
        ("build", "started"),
        ("build", "finished"),
    ]
    lines = build_lines(seen)
    assert lines.index("bundling index.html") < lines.index("built 1 page")
    # The build follows the agent: it starts after the exit tool's result.
    kinds = named(seen)
    assert kinds.index("build") > max(i for i, k in enumerate(kinds) if k == "tool_result")
    done = seen[-1]
    assert done.event == "done"
    assert done.data["finishReason"] == "exit"
    assert done.data["previewUrl"] == f"/apps/{builds.app_id}/preview/"
    assert done.data["checkpoint"] is not None

    page = (builds.workspace / "index.html").read_text()  # what the agent wrote
    preview = await builds.client.get(done.data["previewUrl"], follow_redirects=True)  # to the preview link
    assert preview.status_code == 200
    assert preview.headers["content-type"].startswith("text/html")
    assert preview.text == "<!-- built -->\n" + page
    assert (builds.workspace / "dist" / "index.html").read_text() == preview.text
    assert temp_build_dirs(builds.workspace) == []
    assert (await finished(builds, run_id, "completed"))["finishReason"] == "exit"
    # Newest first: the run's checkpoint, over the baseline of the prepared project.
    assert [c["kind"] for c in await checkpoints_of(builds.client, builds.app_id, run_id)] == ["run", "baseline"]


async def test_failing_build_fails_the_run_with_the_log_tail(builds: Site) -> None:
    prepare_project(builds.workspace, FAILING_BUILD)
    run_id = "r-build-fail"
    url = gen_url(builds.app_id, "a page [sim:exit_tool]", runId=run_id)
    async with open_stream(builds.client, "GET", url) as (_, events):
        seen = await collect(events)

    assert build_steps(seen)[-1] == ("build", "failed")
    failed_step = [e for e in seen if e.event == "build" and e.data["status"] == "failed"][-1]
    assert failed_step.data["exitCode"] == 2
    assert seen[-1].event == "failed"
    error = seen[-1].data["error"]
    assert error["code"] == "build_failed"
    assert "exited with code 2" in error["message"]
    # The tail of the log, not all of it.
    assert "error: cannot resolve ./missing.js" in error["message"]
    assert "compile step 060" in error["message"]
    assert "compile step 001" not in error["message"]

    row = await finished(builds, run_id, "failed")
    assert row["error"]["code"] == "build_failed"
    assert not (builds.workspace / "dist").exists()
    assert temp_build_dirs(builds.workspace) == []
    assert [c["kind"] for c in await checkpoints_of(builds.client, builds.app_id, run_id)] == ["baseline"]
    assert (await builds.client.get(f"/apps/{builds.app_id}/messages")).json() == []


@pytest.mark.parametrize("mode", MODES)
async def test_stop_during_the_build_kills_its_whole_process_group(builds: Site, mode: str) -> None:
    """Every mode stops a build at once (after_step too: a build is no tool call); rollback then
    restores the files as they were before the run (node_modules/ is never checkpointed)."""
    prepare_project(builds.workspace, HANGING_BUILD)
    (builds.workspace / "hang.flag").write_text("hang")
    before = files_in(builds.workspace)
    run_id = f"r-build-stop-{mode}"
    url = gen_url(builds.app_id, "a page [sim:exit_tool]", runId=run_id)
    async with open_stream(builds.client, "GET", url) as (_, events):
        seen = await collect(events, until=is_ready)
        group = hanging_group(builds.workspace)
        response = await stop(builds.client, run_id, mode)
        rest = await collect(events)

    assert build_steps(seen) == [("install", "started"), ("install", "finished"), ("build", "started")]
    assert [e.event for e in rest] == ["interrupted"]
    assert rest[0].data == {"reason": "user_stop", "mode": mode, "runId": run_id}
    if mode == "rollback":
        assert response.status_code == 200
        assert response.json() == {"runId": run_id, "status": "interrupted", "mode": "rollback", "rolledBack": True}
        # The restore came after the build was dead: npm is reaped already.
        assert proc_state(group.leader) is None
        kept = {k: v for k, v in files_in(builds.workspace).items() if not k.startswith("node_modules/")}
        assert kept == before
    else:
        assert response.status_code == 202
        assert response.json() == {"runId": run_id, "status": "stopping", "mode": mode}
        assert (builds.workspace / "index.html").is_file()  # the agent's file stays (not rolled back)
    row = await finished(builds, run_id, "interrupted")
    assert proc_state(group.leader) is None  # npm was killed and reaped before the run ended
    await assert_all_dead(set(group.members))
    assert row["stopReason"] == "user_stop"
    assert not (builds.workspace / "dist").exists()
    assert temp_build_dirs(builds.workspace) == []
    assert [c["kind"] for c in await checkpoints_of(builds.client, builds.app_id, run_id)] == ["baseline"]


@pytest.mark.parametrize("mode", MODES)
async def test_a_stopped_run_never_builds(builds: Site, mode: str) -> None:
    prepare_project(builds.workspace, MARKING_BUILD)
    run_id = f"r-no-build-{mode}"
    url = gen_url(builds.app_id, "files [sim:tools_midstream files=5 pace=5]", runId=run_id)
    async with open_stream(builds.client, "GET", url) as (_, events):
        seen = await collect(events, until=is_text)  # the model is streaming: the LLM step
        response = await stop(builds.client, run_id, mode)
        seen += await collect(events)

    assert response.status_code == (200 if mode == "rollback" else 202)
    assert seen[-1].data == {"reason": "user_stop", "mode": mode, "runId": run_id}
    assert "build" not in named(seen)
    await finished(builds, run_id, "interrupted")
    # No npm process ever started: no lock file, no build marker.
    for name in ("build.marker", "package-lock.json", "node_modules", "dist"):
        assert not (builds.workspace / name).exists(), name
    assert temp_build_dirs(builds.workspace) == []


async def test_after_step_during_the_exit_tool_never_builds(settings: Settings) -> None:
    """The last tool call before a build is `exit`: an after_step stop that waits for it must
    still end the run there, not let it go on into the build."""
    async with open_site(settings.with_overrides(build=BUILDS, tool_delay_s=TOOL_DELAY_S)) as site:
        prepare_project(site.workspace, MARKING_BUILD)
        run_id = "r-exit-after-step"
        url = gen_url(site.app_id, "a page [sim:exit_tool]", runId=run_id)
        async with open_stream(site.client, "GET", url) as (_, events):
            seen = await collect(events, until=lambda e: e.event == "tool_call" and e.data["name"] == "exit")
            response = await stop(site.client, run_id, "after_step")
            rest = await collect(events)

        assert response.status_code == 202
        assert response.json() == {"runId": run_id, "status": "stopping", "mode": "after_step"}
        assert [e.event for e in rest] == ["tool_result", "interrupted"]
        assert rest[0].data["callId"] == seen[-1].data["callId"]
        assert rest[1].data == {"reason": "user_stop", "mode": "after_step", "runId": run_id}
        row = await finished(site, run_id, "interrupted")
        assert row["toolCallsExecuted"] == 2  # index.html, then exit
        assert (site.workspace / "index.html").is_file()
        for name in ("build.marker", "package-lock.json", "node_modules", "dist"):
            assert not (site.workspace / name).exists(), name
        assert [c["kind"] for c in await checkpoints_of(site.client, site.app_id, run_id)] == ["baseline"]


async def test_superseding_a_building_run_kills_its_build_first(builds: Site) -> None:
    prepare_project(builds.workspace, HANGING_BUILD)
    (builds.workspace / "hang.flag").write_text("hang")
    old_url = gen_url(builds.app_id, "a page [sim:exit_tool]", runId="r-old-build")
    new_url = gen_url(builds.app_id, "the page again [sim:exit_tool]", runId="r-new-build")
    async with open_stream(builds.client, "GET", old_url) as (_, old_events):
        await collect(old_events, until=is_ready)
        group = hanging_group(builds.workspace)
        (builds.workspace / "hang.flag").unlink()  # the next build completes
        async with open_stream(builds.client, "GET", new_url) as (response, new_events):
            assert response.status_code == 200
            opening = await collect(new_events, until=lambda e: e.event == "run")
            # The new run's stream has started: the old build must be gone already.
            alive_at_start = sorted(pid for pid in group.members if is_alive(pid))
            npm_at_start = proc_state(group.leader)
            old_rest = await collect(old_events)
            new_all = opening + await collect(new_events)

    assert alive_at_start == []
    assert npm_at_start is None
    assert [e.event for e in old_rest] == ["interrupted"]
    assert old_rest[0].data == {"reason": "superseded", "mode": "immediate", "runId": "r-old-build"}
    assert (await finished(builds, "r-old-build", "interrupted"))["stopReason"] == "superseded"

    # The new run went on: its own agent steps, then its build (dependencies unchanged: no install).
    assert {e.data["runId"] for e in new_all} == {"r-new-build"}
    assert build_steps(new_all) == [("install", "skipped"), ("build", "started"), ("build", "finished")]
    assert new_all[-1].event == "done"
    assert new_all[-1].data["previewUrl"] == f"/apps/{builds.app_id}/preview/"
    assert (builds.workspace / "dist" / "index.html").read_text().startswith("<!-- built -->\n")
    assert temp_build_dirs(builds.workspace) == []


async def test_a_stop_that_lands_as_the_build_dir_is_made_leaves_no_temp_dir(tmp_path: Path) -> None:
    """The race behind a stop at the start of the build, made deterministic at the runner's level:
    the thread making the temp dir commits, and the cancellation arrives before the task resumes
    (here the cancel is requested just before, with the gate open, so the mkdir does commit)."""
    workspace = tmp_path / "ws"
    prepare_project(workspace, GOOD_BUILD)

    def emit(event: BuildEvent) -> None:
        if (event.step, event.status) == ("install", "finished"):
            task.cancel()  # delivered at the next await: the worker thread that makes the build dir

    task = asyncio.create_task(run_build(workspace, BUILDS, emit, StopGate()))
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(HANG_TIMEOUT_S):
            await task
    assert temp_build_dirs(workspace) == []
