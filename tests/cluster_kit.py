"""Several `runforge serve` processes sharing one PostgreSQL database, one Redis and one simulator.

Each test gets a fresh database, its own Redis key prefix (so tests never see each other's
channels or streams) and a standalone LLM simulator the workers all talk to, so it can tell
when the upstream connection of a run was closed, whichever worker ran it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from app.simulator import RequestRecord, SimulatorConfig, SimulatorServer
from tests.cli_kit import Child, Spawn, cli_children
from tests.support import HANG_TIMEOUT_S

# Short enough for tests to see a lost worker within seconds, long enough for a loaded CI box.
HEARTBEAT_S = 0.2
WORKER_TIMEOUT_S = 1.5
RECONCILE_S = 0.5


@dataclass
class Worker:
    name: str
    child: Child
    url: str = ""
    token: str | None = None

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.url, headers={"Authorization": f"Bearer {token}"}, timeout=30.0)

    def kill(self) -> None:
        self.child.proc.send_signal(signal.SIGKILL)


@dataclass
class Cluster:
    """Workers started one by one on shared services; `token` is the first worker's local user."""

    data_dir: Path
    database_url: str
    redis_url: str
    simulator: SimulatorServer
    spawn: Spawn
    prefix: str  # of every Redis key and channel of these workers
    workers: list[Worker] = field(default_factory=list)
    token: str = ""

    def env(self, name: str, **extra: str) -> dict[str, str]:
        """A worker's environment, over the child's (tests/cli_kit.py: data dir, port 0)."""
        env = {
            "RUNFORGE_DATABASE_URL": self.database_url,
            "RUNFORGE_BROKER_URL": self.redis_url,
            "RUNFORGE_BROKER_PREFIX": self.prefix,
            "RUNFORGE_WORKER_ID": name,
            "RUNFORGE_HEARTBEAT_S": str(HEARTBEAT_S),
            "RUNFORGE_WORKER_TIMEOUT_S": str(WORKER_TIMEOUT_S),
            "RUNFORGE_RECONCILE_S": str(RECONCILE_S),
            "RUNFORGE_LLM_BASE_URL": self.simulator.base_url,
            "RUNFORGE_LLM_API_KEY": "sim",
            "RUNFORGE_BUILD": "0",
        }
        return env | extra

    async def start_worker(self, name: str, **extra_env: str) -> Worker:
        serve = ("serve", "--port", "0", "--no-access-log")
        worker = Worker(name, await self.spawn(*serve, data_dir=self.data_dir, env=self.env(name, **extra_env)))
        self.workers.append(worker)
        worker.url = (await worker.child.expect(r"Runforge listening on (http://127\.0\.0\.1:\d+)\n"))[1]
        login = await worker.child.expect(r"\nLogin(?: URL: \S+\?token=([\w-]+)|: .*)\n")
        if login[1]:
            self.token = self.token or login[1]
        await _wait_healthy(worker)
        return worker

    def sim_records(self, run_id: str) -> list[RequestRecord]:
        return self.simulator.recorder.records(run_id)

    async def wait_sim(self, run_id: str, check: Callable[[list[RequestRecord]], bool]) -> list[RequestRecord]:
        """Until the simulator's records of a run satisfy `check` (it announces nothing)."""
        async with asyncio.timeout(HANG_TIMEOUT_S):
            while not check(records := self.sim_records(run_id)):  # noqa: ASYNC110 - nothing to await
                await asyncio.sleep(0.01)
        return records


async def _wait_healthy(worker: Worker) -> None:
    async with httpx.AsyncClient(base_url=worker.url, timeout=HANG_TIMEOUT_S) as http, asyncio.timeout(HANG_TIMEOUT_S):
        while True:
            try:
                if (await http.get("/healthz")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            assert worker.child.proc.returncode is None, worker.child.stderr()
            await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def running_cluster(tmp_path: Path, pg_database_url: str, redis_url: str) -> AsyncIterator[Cluster]:
    """The services for a test's workers; every worker is killed and every key deleted on exit."""
    simulator = SimulatorServer(SimulatorConfig(pace_ms=2.0))
    await asyncio.to_thread(simulator.start)
    logs = tmp_path / "logs"
    logs.mkdir()
    prefix = f"rftest{uuid.uuid4().hex[:10]}"
    try:
        async with cli_children(logs) as spawn:  # kills every worker still running on exit
            yield Cluster(tmp_path / "data", pg_database_url, redis_url, simulator, spawn, prefix)
    finally:
        await asyncio.to_thread(simulator.stop)
        await _delete_keys(redis_url, prefix)


async def _delete_keys(redis_url: str, prefix: str) -> None:
    from redis.asyncio import Redis

    redis = Redis.from_url(redis_url)
    try:
        keys: list[Any] = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await redis.delete(*keys)
    finally:
        await redis.aclose()
