"""The stop guarantees, one by one, over real sockets (server thread + simulator + httpx)."""

from __future__ import annotations

import httpx

from tests.support import Event, ServerThread, collect, gen_url, open_stream, text_of, wait_for_status

SLOW = "[sim:long_text pace=5000]"  # one token every 5 s: a stop that waited for a token would show
FAST = "[sim:long_text pace=20 tokens=5000]"  # a long answer, tokens flowing


def is_text(event: Event) -> bool:
    return event.event == "message"


async def stop(client: httpx.AsyncClient, run_id: str) -> httpx.Response:
    return await client.post("/app/chat/stop", json={"runId": run_id})


async def test_stop_ends_stream_with_interrupted_and_nothing_after(client: httpx.AsyncClient, app_id: str) -> None:
    url = gen_url(app_id, "write an essay [sim:long_text pace=5]", runId="r-stop")
    async with open_stream(client, "GET", url) as (response, events):
        assert response.status_code == 200
        before = await collect(events, until=lambda e: e.event == "message" and e.seq >= 6)
        stopped = await stop(client, "r-stop")
        after = await collect(events)

    assert stopped.status_code == 202
    assert stopped.json() == {"runId": "r-stop", "status": "stopping", "mode": "immediate"}
    # Text may still be in flight when the stop lands, but the terminal event ends the stream.
    assert after[-1].event == "interrupted"
    assert after[-1].data == {"reason": "user_stop", "mode": "immediate", "runId": "r-stop"}
    assert [e.event for e in after[:-1]] == ["message"] * (len(after) - 1)
    seqs = [e.seq for e in before + after]
    assert seqs == list(range(1, len(seqs) + 1))


async def test_stop_cancels_at_once_not_at_next_token(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    async with open_stream(client, "GET", gen_url(app_id, f"essay {SLOW}", runId="r-now")) as (_, events):
        await collect(events, until=lambda e: e.event == "run")
        await server.sim_records("r-now", lambda rs: len(rs) == 1)  # upstream; its next token is 5 s away
        await stop(client, "r-now")
        rest = await collect(events)
    assert [e.event for e in rest] == ["template", "interrupted"]  # the preset decision precedes the request
    # The upstream saw the disconnect without sending another token.
    records = await server.sim_records("r-now", lambda rs: rs[-1].disconnected_at is not None)
    assert records[-1].chunks_sent == 0
    assert records[-1].finished_at is None


async def test_upstream_closed_while_waiting_for_first_token(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    for scenario, run_id in (("slow_first_token", "r-ttft"), ("slow_headers", "r-headers")):
        async with open_stream(client, "GET", gen_url(app_id, f"hi [sim:{scenario}]", runId=run_id)) as (_, events):
            await collect(events, until=lambda e: e.event == "run")
            # Wait until the request is really upstream before stopping.
            await server.sim_records(run_id, lambda rs: len(rs) == 1)
            assert (await stop(client, run_id)).status_code == 202
            assert [e.event for e in await collect(events)] == ["template", "interrupted"]
        records = await server.sim_records(run_id, lambda rs: rs[0].disconnected_at is not None)
        assert records[0].first_chunk_at is None


async def test_no_tool_runs_after_stop(server: ServerThread, client: httpx.AsyncClient, app_id: str) -> None:
    url = gen_url(app_id, "files [sim:tools_midstream files=6 pace=3]", runId="r-tools")
    async with open_stream(client, "GET", url) as (_, events):
        seen = await collect(events, until=lambda e: e.event == "tool_result")
        await stop(client, "r-tools")
        seen += await collect(events)
    assert seen[-1].event == "interrupted"
    run = server.services.manager.get("r-tools")
    assert run is not None
    await server.acall(run.wait_finished())

    workspace = server.settings.workspaces_dir / app_id
    written = sorted(p.name for p in workspace.iterdir())
    row = (await client.get("/runs/r-tools")).json()
    # Exactly the executed tools left files, all of them complete; nothing half-written.
    assert len(written) == row["toolCallsExecuted"] >= 1
    assert all(not name.startswith(".") for name in written)
    assert row["toolCallsExecuted"] + row["toolCallsSkipped"] <= 6
    snapshot = {name: (workspace / name).read_bytes() for name in written}
    # The run is over: nothing changes any more, whatever was in flight.
    assert {p.name: p.read_bytes() for p in workspace.iterdir()} == snapshot


async def test_no_follow_up_llm_request_after_stop(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    url = gen_url(app_id, "files [sim:tools_midstream files=6 pace=3]", runId="r-follow")
    async with open_stream(client, "GET", url) as (_, events):
        await collect(events, until=lambda e: e.event == "tool_call")
        await stop(client, "r-follow")
        await collect(events)
    run = server.services.manager.get("r-follow")
    assert run is not None
    await server.acall(run.wait_finished())
    assert run.stop_requested_mono is not None
    records = server.simulator.recorder.records("r-follow")
    assert records, "the run made no upstream request at all"
    assert all(r.started_at < run.stop_requested_mono for r in records)
    assert all(r.finished_at is not None or r.disconnected_at is not None for r in records)


async def test_interrupted_run_leaves_no_history(client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, f"essay {FAST}", runId="r-hist")) as (_, events):
        await collect(events, until=is_text)
        await stop(client, "r-hist")
        await collect(events)
    run = await wait_for_status(client, "r-hist", "interrupted")
    assert run["stopReason"] == "user_stop"
    assert run["stopRequestedAt"] is not None
    assert run["endedAt"] is not None
    assert (await client.get(f"/apps/{app_id}/messages")).json() == []


async def test_failed_run_leaves_no_history(client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, "x [sim:error_midstream]", runId="r-fail")) as (_, events):
        seen = await collect(events)
    assert seen[-1].event == "failed"
    assert seen[-1].data["error"]["code"] == "upstream_error"
    run = await wait_for_status(client, "r-fail", "failed")
    assert run["error"]["code"] == "upstream_error"
    assert (await client.get(f"/apps/{app_id}/messages")).json() == []


async def test_completed_run_commits_the_turn(client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, "a counter site [sim:codegen]", runId="r-ok")) as (_, events):
        seen = await collect(events)
    assert seen[-1].event == "done"
    messages = (await client.get(f"/apps/{app_id}/messages")).json()
    assert [(m["role"], m["runId"]) for m in messages] == [("user", "r-ok"), ("ai", "r-ok")]
    assert messages[0]["content"] == "a counter site [sim:codegen]"
    assert messages[1]["content"] == text_of(seen)


async def test_client_disconnect_stops_the_run(server: ServerThread, client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, f"essay {FAST}", runId="r-gone")) as (_, events):
        await collect(events, until=is_text)
    # Leaving the block closed the connection, like a browser's AbortController.
    await server.sim_records("r-gone", lambda rs: rs[-1].disconnected_at is not None)
    run = await wait_for_status(client, "r-gone", "interrupted")
    assert run["stopReason"] == "client_disconnect"


async def test_on_disconnect_continue_keeps_running_and_can_be_joined(client: httpx.AsyncClient, app_id: str) -> None:
    url = gen_url(app_id, "a site", runId="r-cont", onDisconnect="continue")
    async with open_stream(client, "GET", url) as (_, events):
        first = await collect(events, until=is_text)
    async with open_stream(client, "GET", "/runs/r-cont/events", headers={"Last-Event-ID": first[-1].id}) as (
        response,
        events,
    ):
        assert response.status_code == 200
        rest = await collect(events)
    assert rest[0].seq == first[-1].seq + 1
    assert rest[-1].event == "done"
    assert len((await client.get(f"/apps/{app_id}/messages")).json()) == 2


async def test_new_run_supersedes_the_active_one(server: ServerThread, client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, f"old {FAST}", runId="r-old")) as (_, old_events):
        await collect(old_events, until=is_text)
        async with open_stream(client, "GET", gen_url(app_id, "new [sim:long_text tokens=20]", runId="r-new")) as (
            _,
            new_events,
        ):
            old_rest = await collect(old_events)
            new_all = await collect(new_events)
    assert [e.event for e in old_rest] == ["interrupted"]
    assert old_rest[0].data["reason"] == "superseded"
    assert {e.data["runId"] for e in new_all} == {"r-new"}
    assert all(e.id.startswith("r-new:") for e in new_all)
    assert new_all[-1].event == "done"
    old_records = server.simulator.recorder.records("r-old")
    assert old_records[-1].disconnected_at is not None


async def test_multitask_reject_answers_409(client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, f"old {FAST}", runId="r-busy")) as (_, events):
        await collect(events, until=is_text)
        response = await client.get(gen_url(app_id, "new", multitask="reject"))
        assert response.status_code == 409
        assert response.json()["error"] == "run_active"
        # The active run was not touched.
        assert (await client.get("/runs/r-busy")).json()["status"] == "running"
        await stop(client, "r-busy")


async def test_continue_right_after_stop(client: httpx.AsyncClient, app_id: str) -> None:
    prompt = "build it [sim:codegen pace=3]"
    async with open_stream(client, "GET", gen_url(app_id, prompt, runId="r-first")) as (_, events):
        await collect(events, until=is_text)
        await stop(client, "r-first")
        await collect(events)
    async with open_stream(client, "GET", gen_url(app_id, prompt, runId="r-second")) as (_, events):
        second = await collect(events)
    assert second[-1].event == "done"
    assert {e.data["runId"] for e in second} == {"r-second"}
    messages = (await client.get(f"/apps/{app_id}/messages")).json()
    assert [m["runId"] for m in messages] == ["r-second", "r-second"]


async def test_stop_is_idempotent_and_checks_ownership(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient, app_id: str
) -> None:
    async with open_stream(client, "GET", gen_url(app_id, f"essay {FAST}", runId="r-own")) as (_, events):
        await collect(events, until=is_text)
        foreign = await other_client.post("/runs/r-own/stop")
        assert foreign.status_code == 403
        assert (await client.get("/runs/r-own")).json()["status"] == "running"
        first = await client.post("/chat/stop", json={"runId": "r-own"})
        await collect(events)
    second = await client.post("/runs/r-own/stop")
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json() == {"runId": "r-own", "status": "interrupted", "mode": "immediate", "rolledBack": False}
    assert (await client.post("/app/chat/stop", json={"runId": "nope"})).json()["status"] == "pending"


async def test_stop_accepted_before_the_run_task_starts(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    """A stop that races run creation is not lost."""
    from app.control.cancel import StopReason
    from app.control.request import RunRequest

    async def start_and_stop() -> tuple[str, int]:
        manager = server.services.manager
        workspace = server.services.workspace(app_id)
        user = await server.services.apps.get(app_id)
        assert user is not None
        run = await manager.start(RunRequest("r-race", app_id, user.owner_id, "x", workspace))
        run.cancel(StopReason.USER_STOP)  # same loop iteration as the start: the task has not run yet
        await run.wait_finished()
        return run.status.value, len(server.simulator.recorder.records("r-race"))

    status, upstream_requests = await server.acall(start_and_stop())
    assert status == "interrupted"
    assert upstream_requests == 0
    assert (await wait_for_status(client, "r-race", "interrupted"))["stopReason"] == "user_stop"
