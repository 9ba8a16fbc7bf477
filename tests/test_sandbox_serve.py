"""`runforge serve` and the build sandbox: what the banner and /readyz say, what a server without
bubblewrap does with a build, and the data directory's permissions (real CLI processes)."""

from __future__ import annotations

import asyncio
import signal
import stat
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.cli_kit import EXIT_TIMEOUT_S, ServeProcess, Spawn, cli_children, start_serve
from tests.process_kit import assert_all_dead, assert_no_sandbox_left, no_process_left
from tests.support import collect, gen_url, open_stream, wait_for_status
from tests.test_stop_modes import HANGING_BUILD, hanging_group, is_ready, prepare_project


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    async with cli_children(tmp_path) as start:
        yield start


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def readyz_sandbox(serve: ServeProcess) -> dict[str, object]:
    async with serve.client() as http:
        response = await http.get("/readyz", headers={"Authorization": ""})
    assert response.status_code == 200  # a build sandbox is not a readiness check: the rest works
    sandbox: dict[str, object] = response.json()["sandbox"]
    return sandbox


async def run_a_build(serve: ServeProcess, run_id: str) -> list[str]:
    """A vue_project run whose build script would report on the host; returns the events' names."""
    async with serve.client() as http:
        app_id = (await http.post("/apps", json={"name": "site", "codeGenType": "vue_project"})).json()["id"]
        async with open_stream(http, "GET", gen_url(app_id, "a site [sim:build_escape]", runId=run_id)) as (_, events):
            seen = await collect(events)
        row = await wait_for_status(http, run_id, "failed" if seen[-1].event == "failed" else "completed")
    return [seen[-1].event, row.get("error", {}).get("code") if row.get("error") else None]


async def test_the_banner_and_readyz_name_the_sandbox_and_the_data_is_private(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh" / "data"
    serve = await start_serve(spawn, data_dir)
    assert "\nBuild sandbox: bubblewrap (limits: cpu by rlimit" in serve.child.output
    sandbox = await readyz_sandbox(serve)
    assert sandbox["kind"] == "bubblewrap"
    assert sandbox["available"] is True
    assert set(sandbox["limits"]) == {"cpu", "memory", "processes", "file_size", "write_bytes", "tmp"}
    assert mode(data_dir) == 0o700
    secrets = [data_dir / name for name in ("runforge.db", "preview-key", "local-token")]
    secrets += list(data_dir.glob("runforge.db-*"))  # SQLite's -wal and -shm
    assert {path.name: oct(mode(path)) for path in secrets} == {path.name: oct(0o600) for path in secrets}


async def test_an_existing_data_directory_is_narrowed(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "old"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    (data_dir / "runforge.db").touch(mode=0o644)
    (data_dir / "runforge.db").chmod(0o644)
    await start_serve(spawn, data_dir)
    assert mode(data_dir) == 0o700
    assert mode(data_dir / "runforge.db") == 0o600


async def test_no_sandbox_is_reported_loudly(spawn: Spawn, tmp_path: Path) -> None:
    serve = await start_serve(spawn, tmp_path / "data", env={"RUNFORGE_BUILD_SANDBOX": "none"})
    assert "\nBuild sandbox: NONE. WARNING: builds run UNCONFINED" in serve.child.output
    sandbox = await readyz_sandbox(serve)
    assert sandbox["kind"] == "none"
    assert "UNCONFINED" in str(sandbox["warning"])
    assert "builds run UNCONFINED" in serve.child.stderr()  # the log says it too


async def test_without_bubblewrap_builds_refuse_to_run(spawn: Spawn, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-such-bwrap")
    serve = await start_serve(spawn, tmp_path / "data", env={"RUNFORGE_BWRAP": missing})
    assert "\nBuild sandbox: UNAVAILABLE, builds will fail" in serve.child.output
    assert "apt-get install bubblewrap" in serve.child.output  # what to install
    sandbox = await readyz_sandbox(serve)
    assert sandbox["available"] is False
    assert "RUNFORGE_BUILD_SANDBOX=none" in str(sandbox["problem"])
    assert await run_a_build(serve, "r-no-sandbox") == ["failed", "sandbox_unavailable"]
    assert not list((tmp_path / "data" / "workspaces").glob("*/leak-report.json"))  # the script never ran


async def test_kill_9_of_the_server_kills_its_sandboxed_build(spawn: Spawn, tmp_path: Path) -> None:
    """No cleanup code of the server runs after SIGKILL: the sandbox dies with its parent
    (--die-with-parent), and the kernel kills everything in its PID namespace. Unconfined, the
    build's process group would outlive the server (the autouse check would find it)."""
    data_dir = tmp_path / "data"
    serve = await start_serve(spawn, data_dir)
    async with serve.client() as http:
        app_id = (await http.post("/apps", json={"name": "build", "codeGenType": "vue_project"})).json()["id"]
        workspace = data_dir / "workspaces" / app_id
        prepare_project(workspace, HANGING_BUILD)
        (workspace / "hang.flag").write_text("hang")
        async with open_stream(http, "GET", gen_url(app_id, "a page [sim:exit_tool]", runId="r-kill")) as (_, events):
            await collect(events, until=is_ready)  # npm run build is running in the sandbox, and hangs
            group = hanging_group(workspace)
            serve.child.proc.kill()
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                assert await serve.child.proc.wait() == -signal.SIGKILL
    await assert_all_dead(set(group.members))
    await assert_no_sandbox_left()


@pytest.fixture(autouse=True)
def _no_process_left(tmp_path: Path) -> Iterator[None]:
    yield from no_process_left(tmp_path)
