"""The real `runforge` command in subprocesses: user add, serve, SIGTERM, a crash, and `runforge run`."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.logs import RedactSecrets
from tests.cli_kit import EXIT_TIMEOUT_S, Spawn, cli_children, start_serve
from tests.process_kit import assert_all_dead, proc_state
from tests.support import ServerThread, collect, gen_url, open_stream, wait_for_status
from tests.test_stop_modes import HANGING_BUILD, hanging_group, is_ready, prepare_project, temp_build_dirs

LONG = "[sim:long_text pace=20 tokens=100000]"


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    async with cli_children(tmp_path) as start:
        yield start


def run_row(data_dir: Path, run_id: str) -> dict[str, Any]:
    with sqlite3.connect(data_dir / "runforge.db") as db:
        db.row_factory = sqlite3.Row
        row = db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
    assert row is not None, run_id
    return dict(row)


async def test_user_add_prints_the_token_last(server: ServerThread, spawn: Spawn) -> None:
    data_dir = server.settings.data_dir
    # The server's database, whichever it is (RUNFORGE_TEST_DATABASE=postgresql runs it on PostgreSQL).
    env = {"RUNFORGE_DATABASE_URL": server.settings.resolved_database_url}
    added = await spawn("user", "add", "carol", data_dir=data_dir, env=env)
    assert await added.finish() == 0, added.stderr()
    token = added.output.rstrip("\n").splitlines()[-1]
    assert re.fullmatch(r"[\w-]{32,}", token), added.output

    # The server on the same data directory accepts it at once.
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0) as http:
        headers = {"Authorization": f"Bearer {token}"}
        created = await http.post("/apps", json={"name": "carol's"}, headers=headers)
        assert created.status_code == 201
        assert [a["id"] for a in (await http.get("/apps", headers=headers)).json()] == [created.json()["id"]]

    again = await spawn("user", "add", "carol", data_dir=data_dir, env=env)
    assert await again.finish() != 0
    assert token not in again.output
    assert "already exists" in again.stderr()


# -- runforge serve ------------------------------------------------------------------------------


async def test_serve_prints_a_banner_with_a_login_url(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    first = await start_serve(spawn, data_dir)
    assert re.search(r"^LLM: embedded simulator\b", first.child.output, re.MULTILINE), first.child.output
    assert first.token is not None, first.child.output
    async with first.client() as http:
        assert (await http.get("/apps")).status_code == 200
        assert (await http.get("/healthz")).json()["llm"] == "simulator"
        login = await http.get(f"/?token={first.token}", headers={"Authorization": ""})
        assert login.status_code == 303
    first.child.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal it caught: -SIGTERM is a clean exit here.
    assert await first.child.finish() in (0, -signal.SIGTERM), first.child.stderr()
    assert "Application shutdown complete" in first.child.stderr()

    # A second start on the same data directory shows the same login URL again.
    second = await start_serve(spawn, data_dir)
    assert second.token == first.token
    async with second.client() as http:
        assert (await http.get("/apps")).status_code == 200


async def test_ctrl_c_on_serve_exits_quietly_after_a_clean_shutdown(spawn: Spawn, tmp_path: Path) -> None:
    """What `make run` then Ctrl-C does: status 0, no traceback, each of uvicorn's lines once (the
    embedded simulator is a uvicorn server too, in the same process)."""
    serve = await start_serve(spawn, tmp_path / "data")
    serve.child.proc.send_signal(signal.SIGINT)
    assert await serve.child.finish() == 0, serve.child.stderr()
    stderr = serve.child.stderr()
    assert "Traceback" not in stderr, stderr
    for line in ("Started server process", "Application startup complete", "Shutting down", "Finished server process"):
        assert stderr.count(line) == 1, (line, stderr)


# -- SIGTERM and crashes -------------------------------------------------------------------------


async def test_serve_with_json_logs_names_the_run_app_and_user_of_a_runs_lines(spawn: Spawn, tmp_path: Path) -> None:
    serve = await start_serve(spawn, tmp_path / "data", env={"RUNFORGE_LOG_FORMAT": "json"})
    async with serve.client() as http:
        app_id = (await http.post("/apps", json={"name": "logs", "codeGenType": "vue_project"})).json()["id"]
        async with open_stream(http, "GET", gen_url(app_id, f"essay {LONG}", runId="r-json")) as (_, events):
            await collect(events, until=lambda e: e.event == "message")
            await http.post("/app/chat/stop", json={"runId": "r-json"})
            await collect(events)
        await wait_for_status(http, "r-json", "interrupted")
    serve.child.proc.terminate()
    assert await serve.child.finish() in (0, -signal.SIGTERM)  # uvicorn re-raises the signal it caught
    lines = serve.child.log.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # every line is JSON, uvicorn's own included
    decision = next(e for e in entries if e["message"].startswith("template-no-hit run=r-json"))
    assert (decision["runId"], decision["appId"], decision["level"]) == ("r-json", app_id, "INFO")
    assert decision["userId"]  # the local user's id
    assert any(e["logger"].startswith("uvicorn") for e in entries)
    assert serve.token not in serve.child.log.read_text()


async def test_sigterm_interrupts_running_streams_and_exits(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    serve = await start_serve(spawn, data_dir)
    async with serve.client() as http:
        app_id = (await http.post("/apps", json={"name": "term", "codeGenType": "vue_project"})).json()["id"]
        async with open_stream(http, "GET", gen_url(app_id, f"essay {LONG}", runId="r-term")) as (_, events):
            before = await collect(events, until=lambda e: e.event == "message" and e.seq >= 5)
            serve.child.proc.send_signal(signal.SIGTERM)
            after = await collect(events)
    assert [e.event for e in before] == ["run", "template", "message", "message", "message"]
    assert after[-1].event == "interrupted"
    assert after[-1].data == {"reason": "shutdown", "mode": "immediate", "runId": "r-term"}
    assert {e.event for e in after[:-1]} <= {"message"}
    async with asyncio.timeout(EXIT_TIMEOUT_S):
        returncode = await serve.child.proc.wait()
    assert returncode in (0, -signal.SIGTERM), serve.child.stderr()  # uvicorn re-raises the signal it caught
    assert "Application shutdown complete" in serve.child.stderr()

    row = run_row(data_dir, "r-term")
    assert (row["status"], row["stop_reason"]) == ("interrupted", "shutdown")
    assert row["ended_at"] is not None
    with sqlite3.connect(data_dir / "runforge.db") as db:
        assert db.execute("SELECT count(*) FROM chat_messages").fetchone() == (0,)
    await assert_restart_keeps_the_outcome(spawn, data_dir, app_id, "r-term")


async def assert_restart_keeps_the_outcome(spawn: Spawn, data_dir: Path, app_id: str, run_id: str) -> None:
    """A server started again on the data directory keeps the run as it was recorded (not
    `server_restart`: it ended cleanly), and runs the next request on the same app."""
    again = await start_serve(spawn, data_dir)
    async with again.client() as http:
        run = (await http.get(f"/runs/{run_id}")).json()
        assert (run["status"], run["stopReason"], run["live"]) == ("interrupted", "shutdown", False)
        async with open_stream(http, "GET", gen_url(app_id, "a page [sim:exit_tool]", runId=f"{run_id}-next")) as (
            _,
            events,
        ):
            assert (await collect(events))[-1].event == "done"
        assert [m["runId"] for m in (await http.get(f"/apps/{app_id}/messages")).json()] == [f"{run_id}-next"] * 2
    again.child.proc.send_signal(signal.SIGTERM)
    assert await again.child.finish() in (0, -signal.SIGTERM), again.child.stderr()


async def test_sigterm_during_a_build_kills_it_and_exits(spawn: Spawn, tmp_path: Path) -> None:
    """The build's whole process group is killed, its temp dir removed, no dist/ published; the
    run ends `interrupted` (shutdown) and the process exits cleanly."""
    data_dir = tmp_path / "data"
    serve = await start_serve(spawn, data_dir, env={"RUNFORGE_BUILD": "1"})
    async with serve.client() as http:
        app_id = (await http.post("/apps", json={"name": "build", "codeGenType": "vue_project"})).json()["id"]
        workspace = data_dir / "workspaces" / app_id
        prepare_project(workspace, HANGING_BUILD)
        (workspace / "hang.flag").write_text("hang")
        url = gen_url(app_id, "a page [sim:exit_tool]", runId="r-term-build")
        async with open_stream(http, "GET", url) as (_, events):
            await collect(events, until=is_ready)  # npm run build is running, and hangs
            group = hanging_group(workspace)
            serve.child.proc.send_signal(signal.SIGTERM)
            after = await collect(events)
    assert [e.event for e in after if e.event != "build"] == ["interrupted"]
    assert after[-1].data == {"reason": "shutdown", "mode": "immediate", "runId": "r-term-build"}
    async with asyncio.timeout(EXIT_TIMEOUT_S):
        returncode = await serve.child.proc.wait()
    assert returncode in (0, -signal.SIGTERM), serve.child.stderr()
    assert proc_state(group.leader) is None  # npm was killed and reaped before the server exited
    await assert_all_dead(set(group.members))
    assert not (workspace / "dist").exists()
    assert temp_build_dirs(workspace) == []
    row = run_row(data_dir, "r-term-build")
    assert (row["status"], row["stop_reason"]) == ("interrupted", "shutdown")
    (workspace / "hang.flag").unlink()  # the next build completes
    await assert_restart_keeps_the_outcome(spawn, data_dir, app_id, "r-term-build")


async def test_runs_left_by_a_crash_are_failed_on_restart(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    first = await start_serve(spawn, data_dir)
    async with first.client() as http:
        app_id = (await http.post("/apps", json={"name": "crash", "codeGenType": "vue_project"})).json()["id"]
        url = gen_url(app_id, f"essay {LONG}", runId="r-crash", onDisconnect="continue")
        async with open_stream(http, "GET", url) as (_, events):
            await collect(events, until=lambda e: e.event == "message")
            first.child.proc.kill()
            async with asyncio.timeout(EXIT_TIMEOUT_S):
                assert await first.child.proc.wait() == -signal.SIGKILL
    assert run_row(data_dir, "r-crash")["status"] == "running"  # what the dead process left behind

    second = await start_serve(spawn, data_dir)
    assert second.token == first.token
    async with second.client() as http:
        run = (await http.get("/runs/r-crash")).json()
        assert (run["status"], run["live"]) == ("failed", False)
        assert run["error"]["code"] == "server_restart"
        assert run["endedAt"] is not None
        # A browser rejoining from the last event it saw still learns how the run ended.
        async with open_stream(http, "GET", "/runs/r-crash/events", headers={"Last-Event-ID": "r-crash:5"}) as (
            _,
            events,
        ):
            replayed = await collect(events)
        assert [(e.event, e.data["error"]["code"]) for e in replayed] == [("failed", "server_restart")]
        assert (await http.get(f"/apps/{app_id}/messages")).json() == []
        # A stop now reports the final state instead of pretending to stop something.
        stop = await http.post("/runs/r-crash/stop")
        assert (stop.status_code, stop.json()["status"]) == (200, "failed")
        # The app is not held by the dead run: a new run on it completes.
        async with open_stream(http, "GET", gen_url(app_id, "a page [sim:exit_tool]", runId="r-after-crash")) as (
            _,
            events,
        ):
            assert (await collect(events))[-1].event == "done"
        health = (await http.get("/healthz")).json()
        assert (health["activeRuns"], health["runTasks"]) == (0, 0)


# -- runforge run --------------------------------------------------------------------------------


async def test_run_command_ctrl_c_stops_the_run(
    server: ServerThread, client: httpx.AsyncClient, token: str, spawn: Spawn, tmp_path: Path
) -> None:
    cli = await spawn("run", f"essay {LONG}", "--server", server.url, "--token", token, data_dir=tmp_path / "cli")
    app_id = (await cli.expect(r"created app (\w+) "))[1]
    run_id = (await cli.expect(rf"run (\S+) on app {app_id}\n"))[1]
    await cli.expect(rf"on app {app_id}\ntemplate: none\n\S+ \S+ \S+ ")  # some text has streamed
    cli.proc.send_signal(signal.SIGINT)
    assert await cli.finish() == 130, cli.output + cli.stderr()
    assert cli.output.rstrip("\n").endswith("interrupted (user_stop)")

    run = await wait_for_status(client, run_id, "interrupted")
    assert run["stopReason"] == "user_stop"
    assert run["appId"] == app_id
    assert (await client.get(f"/apps/{app_id}/messages")).json() == []


async def test_run_command_runs_to_completion(
    server: ServerThread, client: httpx.AsyncClient, token: str, spawn: Spawn, tmp_path: Path
) -> None:
    prompt = "a counter site [sim:codegen pace=1]"
    cli = await spawn(
        "run", prompt, "--type", "vue_project", "--server", server.url, "--token", token, data_dir=tmp_path / "cli"
    )
    assert await cli.finish() == 0, cli.output + cli.stderr()
    assert re.search(r"^done: 3 steps, 3 tool calls, 3 files$", cli.output, re.MULTILINE), cli.output
    app_id = re.search(r"created app (\w+)", cli.output)
    assert app_id is not None
    files = (await client.get(f"/apps/{app_id[1]}/files")).json()
    assert {f["path"] for f in files} == {"index.html", "style.css", "script.js"}
    messages = (await client.get(f"/apps/{app_id[1]}/messages")).json()
    assert [m["role"] for m in messages] == ["user", "ai"]
    assert messages[0]["content"] == prompt


async def test_run_command_prints_the_preview_as_a_full_url(
    server: ServerThread, token: str, spawn: Spawn, tmp_path: Path
) -> None:
    argv = ("run", "a page [sim:page]", "--type", "html", "--server", server.url, "--token", token)
    cli = await spawn(*argv, data_dir=tmp_path / "cli")
    assert await cli.finish() == 0, cli.output + cli.stderr()
    app_id = re.search(r"created app (\w+)", cli.output)
    assert app_id is not None
    assert f"\npreview: {server.url}/apps/{app_id[1]}/preview/\n" in cli.output, cli.output


@pytest.mark.parametrize(
    ("prompt", "said"),
    [("", "the prompt is empty"), ("   ", "the prompt is empty"), ("x" * 30_000, "the prompt has 30,000 characters")],
    ids=["empty", "blank", "too long"],
)
async def test_run_command_refuses_a_bad_prompt_before_creating_anything(
    server: ServerThread, client: httpx.AsyncClient, token: str, spawn: Spawn, tmp_path: Path, prompt: str, said: str
) -> None:
    cli = await spawn("run", prompt, "--server", server.url, "--token", token, data_dir=tmp_path / "cli")
    assert await cli.finish() == 2, cli.output + cli.stderr()
    assert said in cli.stderr()
    assert (await client.get("/apps")).json() == []  # no orphan app


async def test_run_command_shows_what_the_server_said(
    server: ServerThread, client: httpx.AsyncClient, token: str, spawn: Spawn, tmp_path: Path
) -> None:
    """A refusal is the server's code and message, not 'cannot reach' (here: an app of someone else's)."""
    other = server.add_user("bob")
    async with httpx.AsyncClient(base_url=server.url, headers={"Authorization": f"Bearer {other}"}) as bob:
        app_id = (await bob.post("/apps", json={"name": "bob's", "codeGenType": "html"})).json()["id"]
    argv = ("run", "a page", "--app", app_id, "--server", server.url, "--token", token)
    cli = await spawn(*argv, data_dir=tmp_path / "cli")
    assert await cli.finish() == 1, cli.output + cli.stderr()
    assert re.search(r"^runforge: the server refused: \w+: .+ \(HTTP 403\)$", cli.stderr(), re.MULTILINE), cli.stderr()
    assert "cannot reach" not in cli.stderr()


def test_access_log_redacts_login_tokens_and_prompts() -> None:
    record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d', None, None)
    record.args = ("127.0.0.1:5", "GET", "/app/chat/gen/code?appId=a&message=my%20secret&runId=r", "1.1", 200)
    assert RedactSecrets().filter(record)
    assert "appId=a&message=[redacted]&runId=r" in record.getMessage()
    assert "secret" not in record.getMessage()
    record.args = ("127.0.0.1:5", "GET", "/?token=abc.def", "1.1", 303)
    RedactSecrets().filter(record)
    assert "abc" not in record.getMessage()


def stalled_reader(port: int, token: str, path: str, body: bytes = b"") -> socket.socket:
    """A client that sends a request, reads the status line, and never reads again."""
    client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)  # before connect: a small window
    client.connect(("127.0.0.1", port))
    method = "POST" if body else "GET"
    head = f"{method} {path} HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer {token}\r\nContent-Length: {len(body)}\r\n"
    client.sendall(head.encode() + b"Content-Type: application/json\r\n\r\n" + body)
    assert client.recv(12) == b"HTTP/1.1 200"
    return client


async def test_sigterm_with_stalled_readers_exits_cleanly_without_a_traceback(spawn: Spawn, tmp_path: Path) -> None:
    """Readers that stopped reading (a rejoin of a big finished run, a live run's stream, a /v1
    stream) do not hold the shutdown, and leave no traceback in the log (cli_children checks)."""
    serve = await start_serve(spawn, tmp_path / "data")
    port = int(serve.url.rpartition(":")[2])
    assert serve.token is not None
    async with serve.client() as http:
        app_id = (await http.post("/apps", json={"name": "stalled", "codeGenType": "html"})).json()["id"]
        url = gen_url(app_id, "essay [sim:huge tokens=250000]", runId="r-big", onDisconnect="continue")
        async with http.stream("GET", url) as response:
            assert response.status_code == 200
        await wait_for_status(http, "r-big", "completed")
        chat = {"model": "m", "stream": True, "messages": [{"role": "user", "content": f"hi {LONG}"}]}
        live_app = (await http.post("/apps", json={"name": "live", "codeGenType": "html"})).json()["id"]
        readers = [
            await asyncio.to_thread(stalled_reader, port, serve.token, "/runs/r-big/events"),
            await asyncio.to_thread(stalled_reader, port, serve.token, gen_url(live_app, f"essay {LONG}")),
            await asyncio.to_thread(
                stalled_reader, port, serve.token, "/v1/chat/completions", json.dumps(chat).encode()
            ),
        ]
    serve.child.proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(EXIT_TIMEOUT_S):
        returncode = await serve.child.proc.wait()
    assert returncode in (0, -signal.SIGTERM), serve.child.stderr()
    for reader in readers:
        reader.close()
