"""Three server processes on one PostgreSQL and one Redis: stops and streams across workers.

Every test here runs real `runforge serve` processes (tests/cluster_kit.py); they need the
services, and skip (or fail, under RUNFORGE_REQUIRE_SERVICES=1) without them.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import websockets
from redis.asyncio import Redis

from tests.cluster_kit import RECONCILE_S, WORKER_TIMEOUT_S, Cluster, running_cluster
from tests.support import Event, collect, open_stream, text_of, wait_for_status

LONG = "[sim:long_text pace=20 tokens=100000]"
TERMINAL = {"done", "interrupted", "failed"}
# Generous bounds that only catch hangs: the figures are in docs/benchmarks.md.
STOP_LANDS_WITHIN_S = 5.0

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def cluster(tmp_path: Path, pg_database_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, pg_database_url, redis_url) as group:
        yield group


def seqs(events: list[Event]) -> list[int]:
    return [event.seq for event in events]


async def new_app(http: httpx.AsyncClient) -> str:
    created = await http.post("/apps", json={"name": "cluster", "codeGenType": "html"})
    assert created.status_code == 201, created.text
    app_id: str = created.json()["id"]
    return app_id


def gen_body(app_id: str, run_id: str, message: str = LONG, **extra: Any) -> dict[str, Any]:
    return {"appId": app_id, "message": message, "runId": run_id, "onDisconnect": "continue", **extra}


async def test_start_on_one_stop_on_another_join_on_a_third(cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    w3 = await cluster.start_worker("w3")
    async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2, w3.client(cluster.token) as h3:
        app_id = await new_app(h1)
        run_id = "cross-1"
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, run_id)) as (resp, events1):
            assert resp.status_code == 200
            head = await collect(events1, until=lambda e: e.event == "message" and e.seq >= 6)
            joined_at = head[3].id  # the third worker joins from the middle of what w1 has sent
            headers = {"Last-Event-ID": joined_at}
            async with open_stream(h3, "GET", f"/runs/{run_id}/events", headers=headers) as (resp3, events3):
                assert resp3.status_code == 200
                first3 = await collect(events3, until=lambda e: e.seq >= head[-1].seq + 2)
                stop = await h2.post("/app/chat/stop", json={"runId": run_id})
                assert stop.status_code == 202, stop.text
                assert stop.json()["status"] == "stopping"
                async with asyncio.timeout(STOP_LANDS_WITHIN_S):
                    rest1 = await collect(events1)
                    rest3 = await collect(events3)
        from1 = head + rest1
        from3 = first3 + rest3
        # Each stream ends with `interrupted`, once, and nothing after it.
        for stream in (from1, from3):
            assert stream[-1].event == "interrupted", stream[-3:]
            assert stream[-1].data["reason"] == "user_stop"
            assert [e.event for e in stream].count("interrupted") == 1
        # The joiner got exactly what w1 sent after its Last-Event-ID: nothing lost, nothing twice.
        after = [e for e in from1 if e.seq > head[3].seq]
        assert [(e.id, e.event, e.data) for e in from3] == [(e.id, e.event, e.data) for e in after]
        assert seqs(from1) == sorted(set(seqs(from1)))
        # The upstream of the run (on w1) was closed, and the row says interrupted by the user.
        records = await cluster.wait_sim(run_id, lambda rs: bool(rs) and all(r.disconnected_at for r in rs))
        assert len(records) == 1
        view = await wait_for_status(h3, run_id, "interrupted")
        assert view["stopReason"] == "user_stop"
        assert view["worker"] == "w1"
        # Nothing truncated was saved: no history turn for the interrupted run.
        messages = (await h2.get(f"/apps/{app_id}/messages")).json()
        assert [m for m in messages if m["runId"] == run_id] == []
        # Joined again from w2 after the end, the run replays in full from Redis.
        async with open_stream(h2, "GET", f"/runs/{run_id}/events") as (_, replay):
            replayed = await collect(replay)
        assert [(e.id, e.data) for e in replayed] == [(e.id, e.data) for e in from1]
        assert text_of(replayed) == text_of(from1)


async def test_a_finished_run_replays_from_any_worker_and_answers_204_after_its_end(cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2:
        app_id = await new_app(h1)
        body = gen_body(app_id, "short-1", message="[sim:long_text tokens=30]")
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=body) as (_, events1):
            sent = await collect(events1)
        assert sent[-1].event == "done"
        await wait_for_status(h2, "short-1", "completed")
        async with open_stream(h2, "GET", "/runs/short-1/events", headers={"Last-Event-ID": sent[1].id}) as (_, ev):
            replayed = await collect(ev)
        assert [e.id for e in replayed] == [e.id for e in sent[2:]]
        after_end = await h2.get("/runs/short-1/events", headers={"Last-Event-ID": sent[-1].id})
        assert after_end.status_code == 204


async def test_a_new_run_on_another_worker_supersedes_the_apps_active_run(cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2:
        app_id = await new_app(h1)
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, "old-1")) as (_, old):
            await collect(old, until=lambda e: e.event == "message")
            # multitask=reject: the active run on w1 makes w2 answer 409.
            rejected = await h2.post("/app/chat/gen/code", json=gen_body(app_id, "new-0", multitask="reject"))
            assert rejected.status_code == 409
            assert rejected.json()["error"] == "run_active"
            body = gen_body(app_id, "new-1", message="[sim:long_text tokens=20]")
            async with open_stream(h2, "POST", "/app/chat/gen/code", json=body) as (resp, new):
                assert resp.status_code == 200
                rest_old = await collect(old)
                new_events = await collect(new)
        assert rest_old[-1].event == "interrupted"
        assert rest_old[-1].data["reason"] == "superseded"
        assert new_events[-1].event == "done"
        # The old run had ended (and recorded it) before the new one started.
        old_view = (await h1.get("/runs/old-1")).json()
        new_view = (await h1.get("/runs/new-1")).json()
        assert old_view["status"] == "interrupted"
        assert old_view["endedAt"] <= new_view["startedAt"]


async def test_a_stop_sent_while_the_owners_subscriber_is_down_lands_by_reconciliation(cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    redis = Redis.from_url(cluster.redis_url)
    try:
        async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2:
            app_id = await new_app(h1)
            async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, "rec-1")) as (_, events):
                await collect(events, until=lambda e: e.event == "message")
                # Every pub/sub connection (both workers') dropped just before the stop: its
                # message finds no subscriber, or one that is still resubscribing.
                await redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
                loop = asyncio.get_running_loop()
                sent_at = loop.time()
                stop = await h2.post("/app/chat/stop", json={"runId": "rec-1"})
                assert stop.status_code == 202
                async with asyncio.timeout(STOP_LANDS_WITHIN_S):
                    rest = await collect(events)
                landed_after = loop.time() - sent_at
        assert rest[-1].event == "interrupted"
        # Within the re-check interval (plus generous slack for a loaded machine).
        assert landed_after < RECONCILE_S + 2.0
    finally:
        await redis.aclose()


async def test_killing_the_owner_fails_its_run_with_worker_lost(cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2:
        app_id = await new_app(h1)
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, "lost-1")) as (_, events):
            head = await collect(events, until=lambda e: e.event == "message" and e.seq >= 4)
            async with open_stream(h2, "GET", "/runs/lost-1/events", headers={"Last-Event-ID": head[-1].id}) as (
                _,
                joined,
            ):
                w1.kill()
                loop = asyncio.get_running_loop()
                killed_at = loop.time()
                async with asyncio.timeout(WORKER_TIMEOUT_S + 10):
                    rest = await collect(joined)
                ended_after = loop.time() - killed_at
        assert rest[-1].event == "failed", rest[-3:]
        assert rest[-1].data["error"]["code"] == "worker_lost"
        assert ended_after < WORKER_TIMEOUT_S + 5.0
        view = await wait_for_status(h2, "lost-1", "failed")
        assert view["error"]["code"] == "worker_lost"
        # A rejoin after the end gets nothing newer; one from before gets the terminal event.
        after_end = await h2.get("/runs/lost-1/events", headers={"Last-Event-ID": rest[-1].id})
        assert after_end.status_code == 204
        # The app is free again: a new run on w2 starts and completes.
        body = gen_body(app_id, "after-lost", message="[sim:long_text tokens=10]")
        async with open_stream(h2, "POST", "/app/chat/gen/code", json=body) as (resp, new):
            assert resp.status_code == 200
            assert (await collect(new))[-1].event == "done"


async def test_v1_interrupt_and_socket_interrupt_reach_the_owner(cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    sdk = openai.AsyncOpenAI(base_url=f"{w1.url}/v1", api_key=cluster.token, max_retries=0)
    async with w2.client(cluster.token) as h2, w1.client(cluster.token) as h1:
        # /v1/chat/completions on w1, /v1/interrupt on w2: the stream ends like a normal completion.
        stream = await sdk.chat.completions.create(
            model="runforge-sim",
            messages=[{"role": "user", "content": LONG}],
            stream=True,
            extra_body={"requestId": "v1-cross"},
        )
        finishes: list[str | None] = []
        async with asyncio.timeout(STOP_LANDS_WITHIN_S * 2):
            async for chunk in stream:
                if chunk.choices:
                    finishes.append(chunk.choices[0].finish_reason)
                if len(finishes) == 5:
                    answer = await h2.post("/v1/interrupt", json={"requestId": "v1-cross"})
                    assert answer.status_code == 200, answer.text
                    assert answer.json()["message"] == "Interrupt signal sent for request v1-cross"
        assert finishes[-1] == "stop"
        await cluster.wait_sim("v1-cross", lambda rs: bool(rs) and all(r.disconnected_at for r in rs))
        assert (await wait_for_status(h2, "v1-cross", "interrupted"))["stopReason"] == "user_stop"

        # A code run on w1, interrupted over w2's WebSocket.
        app_id = await new_app(h1)
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, "ws-cross")) as (_, events):
            await collect(events, until=lambda e: e.event == "message")
            ws_url = w2.url.replace("http://", "ws://") + f"/ws/agent?token={cluster.token}"
            async with websockets.connect(ws_url) as socket:
                await socket.send(json.dumps({"type": "INTERRUPT", "requestId": "ws-cross"}))
                async with asyncio.timeout(STOP_LANDS_WITHIN_S):
                    ack = json.loads(await socket.recv())
            assert ack == {"type": "INTERRUPT_ACK", "requestId": "ws-cross", "status": "SUCCESS"}
            async with asyncio.timeout(STOP_LANDS_WITHIN_S):
                rest = await collect(events)
        assert rest[-1].event == "interrupted"
    await sdk.close()


async def test_a_stop_through_another_worker_answers_as_the_owner_would(cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2:
        app_id = await new_app(h1)
        # A finished run: 200 with its final status, from any worker, idempotent.
        body = gen_body(app_id, "done-1", message="[sim:long_text tokens=5]")
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=body) as (_, events):
            assert (await collect(events))[-1].event == "done"
        await wait_for_status(h2, "done-1", "completed")
        answer = await h2.post("/app/chat/stop", json={"runId": "done-1"})
        assert (answer.status_code, answer.json()["status"]) == (200, "completed")
        # A run no worker has started: pending, after the owners had their chance to answer; the
        # stop reached every worker, so a start on another one takes it.
        pending = await h2.post("/app/chat/stop", json={"runId": "later-1"})
        assert (pending.status_code, pending.json()["status"]) == (202, "pending")
        body = gen_body(await new_app(h1), "later-1", message="[sim:long_text tokens=5]")
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=body) as (_, events):
            later = await collect(events)
        assert (later[-1].event, later[-1].data.get("reason")) == ("interrupted", "user_stop"), later
        assert not [e for e in later if e.event == "message"], later
        # A rollback stop through the other worker answers once the owner has restored the files.
        # (A new app for each long run: a follow-up without a directive goes on with the first's.)
        app_id = await new_app(h1)
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, "rb-1")) as (_, events):
            await collect(events, until=lambda e: e.event == "message")
            answer = await h2.post("/app/chat/stop", json={"runId": "rb-1", "mode": "rollback"})
            assert answer.status_code == 200, answer.text
            assert answer.json() == {"runId": "rb-1", "status": "interrupted", "mode": "rollback", "rolledBack": True}
            assert (await collect(events))[-1].event == "interrupted"
        # Stopping again: the owner still holds it (finished), so the answer is its final status.
        again = await h2.post("/app/chat/stop", json={"runId": "rb-1"})
        assert (again.status_code, again.json()["status"]) == (200, "interrupted")
        # Another user's run: 403 through the other worker too, and the run goes on.
        added = await cluster.spawn("user", "add", "bob", data_dir=cluster.data_dir, env=cluster.env("cli"))
        assert await added.finish() == 0, added.stderr()
        bob = added.output.strip().splitlines()[-1]
        app_id = await new_app(h1)
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, "mine-1")) as (_, events):
            await collect(events, until=lambda e: e.event == "message")
            async with w2.client(bob) as as_bob:
                refused = await as_bob.post("/app/chat/stop", json={"runId": "mine-1"})
                assert refused.status_code == 403, refused.text
                assert (await as_bob.post("/v1/interrupt", json={"requestId": "mine-1"})).status_code == 403
            more = await collect(events, until=lambda e: e.event == "message")
            assert more[-1].event == "message"  # still streaming
            stopped = await h2.post("/app/chat/stop", json={"runId": "mine-1"})
            assert stopped.status_code == 202, stopped.text
            assert (await collect(events))[-1].event == "interrupted"
