"""Worker processes while their Redis dies and comes back empty (no persistence).

The database row is the truth about a run; Redis only carries stop signals and copies of the
events. So a stop sent while Redis is down still lands (the owner's reconciliation reads the
row), and once Redis is back the owner publishes its runs' events again: a follower on another
worker reads on from where it was, with nothing lost and nothing twice.

Each test runs its own `redis-server` (it is killed), real `runforge serve` workers
(tests/cluster_kit.py) and the shared PostgreSQL.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import IO, Any

import httpx
import pytest
from redis.asyncio import Redis
from redis.exceptions import RedisError

from tests.cluster_kit import Cluster, Worker, running_cluster
from tests.services import require_service
from tests.support import HANG_TIMEOUT_S, Event, collect, open_stream, wait_for_status
from tests.test_cluster import TERMINAL, gen_body, new_app, seqs

# Generous bounds that only catch hangs.
STOP_LANDS_WITHIN_S = 10.0
RECOVERS_WITHIN_S = 20.0

pytestmark = pytest.mark.timeout(120)


class PrivateRedis:
    """A `redis-server` of this test alone, without persistence, that can be killed and restarted."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            require_service("redis-server", "redis-server is not installed (the Redis restart tests run their own)")
        self._binary = binary
        self._dir = directory
        self._dir.mkdir()
        self.port = _free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._proc: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        assert self._proc is None or self._proc.returncode is not None
        self.starts += 1
        if self._log is not None:
            self._log.close()
        self._log = (self._dir / f"redis-{self.starts}.log").open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            self._binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self._dir),
            cwd=self._dir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=asyncio.subprocess.STDOUT,
        )
        await self._wait_ready()

    async def kill(self) -> None:
        assert self._proc is not None
        self._proc.send_signal(signal.SIGKILL)
        await self._proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    async def close(self) -> None:
        if self.running:
            await self.kill()
        if self._log is not None:
            self._log.close()

    def output(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self._dir.glob("redis-*.log")))

    async def _wait_ready(self) -> None:
        client = Redis.from_url(self.url, socket_connect_timeout=1.0)
        try:
            async with asyncio.timeout(HANG_TIMEOUT_S):
                while True:
                    assert self.running, f"redis-server exited:\n{self.output()}"
                    try:
                        if await client.ping():
                            return
                    except (RedisError, OSError):
                        pass
                    await asyncio.sleep(0.02)  # nothing announces that it listens
        finally:
            await client.aclose()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[PrivateRedis]:
    server = PrivateRedis(tmp_path / "redis")
    await server.start()
    try:
        yield server
    finally:
        await server.close()


@pytest.fixture
async def cluster(tmp_path: Path, pg_database_url: str, private_redis: PrivateRedis) -> AsyncIterator[Cluster]:
    async with running_cluster(tmp_path, pg_database_url, private_redis.url) as group:
        try:
            yield group
        finally:
            if not private_redis.running:  # a test that failed with Redis down: the clean-up needs it
                await private_redis.start()


async def wait_for_log(worker: Worker, text: str) -> None:
    """Until the worker's log has `text` (a log line announces nothing else)."""
    async with asyncio.timeout(HANG_TIMEOUT_S):
        while text not in worker.child.log.read_text(errors="replace"):  # noqa: ASYNC110 - nothing to await
            await asyncio.sleep(0.02)


async def wait_subscribed(redis_url: str, expected: dict[str, int]) -> None:
    """Until every channel has its subscribers again (the workers' stop listeners reconnected)."""
    client = Redis.from_url(redis_url)
    try:
        async with asyncio.timeout(RECOVERS_WITHIN_S):
            while True:
                counts = dict(await client.pubsub_numsub(*expected))
                if all(counts.get(channel.encode()) == count for channel, count in expected.items()):
                    return
                await asyncio.sleep(0.02)  # nothing announces a subscription to another client
    finally:
        await client.aclose()


async def wait_stream_ended(redis_url: str, key: str) -> list[bytes]:
    """Read the run's stream until its terminal entry (the owner republishes it by itself): its ids."""
    client = Redis.from_url(redis_url, protocol=2)
    entry_ids: list[bytes] = []
    try:
        async with asyncio.timeout(RECOVERS_WITHIN_S):
            while True:
                # RESP2: [[key, [(entry id, {field: value}), ...]]], or nothing after the block.
                reply: Any = await client.xread({key: entry_ids[-1] if entry_ids else b"0-0"}, block=1000)
                for entry_id, fields in reply[0][1] if reply else []:
                    entry_ids.append(entry_id)
                    if b"t" in fields:
                        return entry_ids
    finally:
        await client.aclose()


def wire_view(events: list[Event]) -> list[tuple[str, str, dict[str, object]]]:
    return [(e.id, e.event, e.data) for e in events]


async def test_a_redis_restart_loses_no_stop_and_no_event(private_redis: PrivateRedis, cluster: Cluster) -> None:
    w1 = await cluster.start_worker("w1")
    w2 = await cluster.start_worker("w2")
    run_id = "redis-restart-1"
    async with w1.client(cluster.token) as h1, w2.client(cluster.token) as h2:
        app_id = await new_app(h1)
        async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, run_id)) as (resp, events1):
            assert resp.status_code == 200
            head = await collect(events1, until=lambda e: e.event == "message" and e.seq >= 6)
            joined_at = head[3]
            async with open_stream(h2, "GET", f"/runs/{run_id}/events", headers={"Last-Event-ID": joined_at.id}) as (
                resp2,
                events2,
            ):
                assert resp2.status_code == 200
                # The join works through Redis before the fault.
                first2 = await collect(events2, until=lambda e: e.seq >= head[-1].seq + 2)

                await private_redis.kill()
                # The run goes on while Redis is down: these events reach no stream for now.
                down = await collect(events1, until=lambda e: e.seq >= first2[-1].seq + 20)

                # The stop goes to a worker that does not own the run: the row is written, the
                # message to the owner cannot be sent, and the client is still told "stopping".
                stop = await h2.post("/app/chat/stop", json={"runId": run_id})
                assert stop.status_code == 202, stop.text
                assert stop.json()["status"] == "stopping"
                await wait_for_log(w2, "could not send a stop")
                # The owner finds the stop in its row (reconciliation reads the database only).
                async with asyncio.timeout(STOP_LANDS_WITHIN_S):
                    rest1 = await collect(events1)
                from1 = head + down + rest1
                assert from1[-1].event == "interrupted", from1[-3:]
                assert from1[-1].data["reason"] == "user_stop"
                view = await wait_for_status(h1, run_id, "interrupted")
                assert view["stopReason"] == "user_stop"
                assert private_redis.running is False

                # Redis comes back empty: the owner publishes the run's events again, and the
                # follower on w2 reads on from where it was.
                await private_redis.start()
                async with asyncio.timeout(RECOVERS_WITHIN_S):
                    rest2 = await collect(events2)
        # The stream Redis lost was rebuilt in full, from seq 1, by the owner.
        stream_ids = await wait_stream_ended(private_redis.url, f"{cluster.prefix}:run:{run_id}:events")
        assert stream_ids == [f"0-{seq}".encode() for seq in seqs(from1)]
        from2 = first2 + rest2
        after_join = [e for e in from1 if e.seq > joined_at.seq]
        # Nothing lost, nothing twice, the same terminal event: exactly what w1 sent after the join.
        assert wire_view(from2) == wire_view(after_join), (
            f"w2 got seqs {compress(seqs(from2))}, w1 sent {compress(seqs(after_join))} after the join"
        )
        assert [e.event for e in from2].count("interrupted") == 1
        assert seqs(from1) == list(range(1, from1[-1].seq + 1))

        # Joined again after the end, from the start: the rebuilt stream replays the whole run.
        async with open_stream(h2, "GET", f"/runs/{run_id}/events") as (_, replay):
            replayed = await collect(replay)
        assert wire_view(replayed) == wire_view(from1)

        # After the restart, everything works as before: both stop listeners are subscribed
        # again, a new run streams to a joiner on the other worker, and a stop lands.
        channels = {f"{cluster.prefix}:stops": 2, f"{cluster.prefix}:replies:w1": 1, f"{cluster.prefix}:replies:w2": 1}
        await wait_subscribed(private_redis.url, channels)
        await new_run_joined_and_stopped_across_workers(h1, h2, app_id, "after-restart-1")


async def new_run_joined_and_stopped_across_workers(
    h1: httpx.AsyncClient, h2: httpx.AsyncClient, app_id: str, run_id: str
) -> None:
    async with open_stream(h1, "POST", "/app/chat/gen/code", json=gen_body(app_id, run_id)) as (resp, events1):
        assert resp.status_code == 200
        head = await collect(events1, until=lambda e: e.event == "message" and e.seq >= 4)
        async with open_stream(h2, "GET", f"/runs/{run_id}/events") as (resp2, events2):
            assert resp2.status_code == 200
            first2 = await collect(events2, until=lambda e: e.seq >= head[-1].seq + 2)
            stop = await h2.post("/app/chat/stop", json={"runId": run_id})
            assert stop.status_code == 202, stop.text
            async with asyncio.timeout(STOP_LANDS_WITHIN_S):
                from1 = head + await collect(events1)
                from2 = first2 + await collect(events2)
    assert from1[-1].event == "interrupted"
    assert from1[-1].data["reason"] == "user_stop"
    assert wire_view(from2) == wire_view(from1)
    assert [e.event for e in from2 if e.event in TERMINAL] == ["interrupted"]


def compress(values: list[int]) -> str:
    """1,2,3,7,8 -> '1-3,7-8': readable sequence numbers in a failure message."""
    spans: list[str] = []
    for value in values:
        if spans and int(spans[-1].rpartition("-")[2]) == value - 1:
            spans[-1] = f"{spans[-1].partition('-')[0]}-{value}"
        else:
            spans.append(str(value))
    return ",".join(spans)
