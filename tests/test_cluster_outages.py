"""Workers through a PostgreSQL outage, and run ids used again after their app is deleted.

Real `runforge serve` workers (tests/cluster_kit.py) reach PostgreSQL through a TCP proxy the test
cuts (tests/fault_proxy.py), so the database becomes unreachable for every worker at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from tests.cluster_kit import HEARTBEAT_S, WORKER_TIMEOUT_S, running_cluster
from tests.fault_proxy import tcp_proxy
from tests.support import HANG_TIMEOUT_S, collect, open_stream, wait_for_status
from tests.test_cluster import gen_body, new_app

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def database(pg_database_url: str) -> AsyncIterator[AsyncEngine]:
    """The test's database, reached directly (not through the proxy)."""
    engine = create_async_engine(pg_database_url)
    yield engine
    await engine.dispose()


async def db_clock(engine: AsyncEngine) -> float:
    async with engine.connect() as conn:
        return float(await conn.scalar(text("SELECT extract(epoch FROM clock_timestamp())")))


async def until_beating_after(engine: AsyncEngine, instant: float, workers: set[str]) -> None:
    """Until these workers' heartbeats are later than `instant` (database clock): polled, as the
    workers announce their heartbeats to nobody."""
    query = text("SELECT id FROM workers WHERE heartbeat_at > :instant AND stopped_at IS NULL")
    async with asyncio.timeout(HANG_TIMEOUT_S):
        while True:
            async with engine.connect() as conn:
                if workers <= set((await conn.scalars(query, {"instant": instant})).all()):
                    return
            await asyncio.sleep(HEARTBEAT_S / 4)


async def test_a_database_outage_longer_than_the_worker_timeout_fails_no_live_run(
    tmp_path: Path, pg_database_url: str, redis_url: str, database: AsyncEngine
) -> None:
    """Every worker loses the database for twice the worker timeout, then gets it back, w1 a
    moment before w2: w1 must not take w2 for lost because w2's heartbeat is stale."""
    url = make_url(pg_database_url)
    port = url.port or 5432
    async with (
        tcp_proxy(port) as proxy1,
        tcp_proxy(port) as proxy2,
        running_cluster(tmp_path, pg_database_url, redis_url) as cluster,
    ):
        through = {
            name: url.set(port=proxy.port).render_as_string(hide_password=False)
            for name, proxy in (("w1", proxy1), ("w2", proxy2))
        }
        w1 = await cluster.start_worker("w1", RUNFORGE_DATABASE_URL=through["w1"])
        w2 = await cluster.start_worker("w2", RUNFORGE_DATABASE_URL=through["w2"])
        async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2:
            app1, app2 = await new_app(h1), await new_app(h2)
            async with (
                open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app1, "live-1")) as (_, events1),
                open_stream(h2, "POST", "/app/chat/gen/code", json=gen_body(app2, "live-2")) as (_, events2),
            ):
                for events in (events1, events2):
                    await collect(events, until=lambda e: e.event == "message")
                proxy1.down()
                proxy2.down()
                # Twice the worker timeout without a heartbeat from anyone; the runs stream on.
                outage_ends = asyncio.get_running_loop().time() + 2 * WORKER_TIMEOUT_S
                while asyncio.get_running_loop().time() < outage_ends:
                    for events in (events1, events2):
                        assert (await collect(events, until=lambda e: e.event == "message"))[-1].event == "message"
                recovered_at = await db_clock(database)
                proxy1.up()
                await until_beating_after(database, recovered_at, {"w1"})
                proxy2.up()
                # Long enough for both to have swept with fresh heartbeats.
                await until_beating_after(database, recovered_at + WORKER_TIMEOUT_S + 3 * HEARTBEAT_S, {"w1", "w2"})
                for events in (events1, events2):
                    assert (await collect(events, until=lambda e: e.event == "message"))[-1].event == "message"
                async with database.connect() as conn:
                    rows = (await conn.execute(text("SELECT id, status, error_code FROM runs ORDER BY id"))).all()
                assert [tuple(row) for row in rows] == [("live-1", "running", None), ("live-2", "running", None)]
                # Both are stopped by their user, through the other worker.
                assert (await h2.post("/app/chat/stop", json={"runId": "live-1"})).status_code == 202
                assert (await h1.post("/app/chat/stop", json={"runId": "live-2"})).status_code == 202
                for events in (events1, events2):
                    last = (await collect(events))[-1]
                    assert (last.event, last.data["reason"]) == ("interrupted", "user_stop")


async def test_a_run_id_used_again_after_its_app_is_deleted_is_the_new_run(
    tmp_path: Path, pg_database_url: str, redis_url: str
) -> None:
    async with running_cluster(tmp_path, pg_database_url, redis_url) as cluster:
        w1 = await cluster.start_worker("w1")
        w2 = await cluster.start_worker("w2")
        w3 = await cluster.start_worker("w3")
        async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2, w3.client(cluster.token) as h3:
            old_app = await new_app(h1)
            body = gen_body(old_app, "r1", message="[sim:long_text tokens=30] the old run")
            async with open_stream(h1, "POST", "/app/chat/gen/code", json=body) as (_, events):
                old = await collect(events)
            assert old[-1].event == "done"
            # Its copy in Redis is complete (the publisher runs every 50 ms): joined from w3.
            async with open_stream(h3, "GET", "/runs/r1/events") as (_, replay):
                assert (await collect(replay))[-1].event == "done"
            assert (await h2.delete(f"/apps/{old_app}")).status_code == 204  # deleted through another worker

            new = await new_app(h2)
            async with open_stream(h2, "POST", "/app/chat/gen/code", json=gen_body(new, "r1")) as (_, events):
                head = await collect(events, until=lambda e: e.event == "message" and e.seq >= 4)
                # The old run is forgotten everywhere: w1 (which ran it) and w3 follow the new one.
                for http in (h1, h3):
                    view = (await http.get("/runs/r1")).json()
                    assert (view["appId"], view["status"]) == (new, "running"), view
                    async with open_stream(http, "GET", "/runs/r1/events", headers={"Last-Event-ID": head[1].id}) as (
                        _,
                        joined,
                    ):
                        got = await collect(joined, until=lambda e: e.seq >= head[-1].seq)
                    assert [e.id for e in got] == [e.id for e in head[2:]]
                    assert "the old run" not in str([e.data for e in got])
                # A stop sent to w1 stops the new run.
                stop = await h1.post("/app/chat/stop", json={"runId": "r1"})
                assert stop.status_code == 202, stop.text
                assert (await collect(events))[-1].event == "interrupted"
            await wait_for_status(h3, "r1", "interrupted")
