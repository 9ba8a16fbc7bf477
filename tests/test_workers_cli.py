"""`runforge serve --workers N`: uvicorn's supervisor over one socket, as real processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.cli_kit import Child, Spawn, cli_children, start_serve
from tests.process_kit import assert_all_dead, is_alive
from tests.support import HANG_TIMEOUT_S


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    async with cli_children(tmp_path) as start:
        yield start


@pytest.fixture
async def broker_env(redis_url: str) -> AsyncIterator[dict[str, str]]:
    """The broker for one test: its own key prefix, whose keys are deleted afterwards."""
    import redis.asyncio as aioredis

    prefix = f"runforge-test-{uuid.uuid4().hex[:12]}"
    yield {"RUNFORGE_BROKER_URL": redis_url, "RUNFORGE_BROKER_PREFIX": prefix}
    client = aioredis.Redis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


@pytest.fixture
def workers() -> Iterator[set[int]]:
    """The test's worker pids: any still alive at the end are killed (a failed test must not leave them)."""
    pids: set[int] = set()
    yield pids
    for pid in pids:
        if is_alive(pid):
            os.kill(pid, signal.SIGKILL)


def children_of(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # after "pid (comm)"
        # Workers are multiprocessing "spawn" children; the supervisor also has a resource tracker.
        if int(fields[1]) == pid and b"spawn_main" in cmdline and is_alive(int(entry.name)):
            found.add(int(entry.name))
    return found


async def until_both_started(child: Child) -> None:
    """Each worker logs this once its app has started (services, simulator, broker)."""
    async with asyncio.timeout(HANG_TIMEOUT_S):
        while child.log.read_text(errors="replace").count("Application startup complete.") < 2:
            assert child.proc.returncode is None, child.stderr()
            await asyncio.sleep(0.02)  # polling a log another process writes


@contextlib.contextmanager
def stopped(pids: set[int]) -> Iterator[None]:
    """SIGSTOP `pids` for the block: they accept no connection meanwhile."""
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)


async def test_two_workers_share_the_port_and_stop_together(
    spawn: Spawn, tmp_path: Path, broker_env: dict[str, str], workers: set[int]
) -> None:
    data_dir = tmp_path / "data"
    env = {**broker_env, "RUNFORGE_WORKERS": "2"}

    async def start(*args: str, data_dir: Path) -> Child:
        return await spawn(*args, data_dir=data_dir, env=env)

    serve = await start_serve(start, data_dir)
    parent = serve.child.proc.pid
    assert f"\nWorkers: 2 (broker {broker_env['RUNFORGE_BROKER_URL']})\n" in serve.child.output
    assert serve.token is not None  # the parent made the local user once, before the workers
    await until_both_started(serve.child)
    workers.update(children_of(parent))
    assert len(workers) == 2, (workers, serve.child.stderr())
    try:
        # With the other worker frozen, only this one can accept: each one answers on its own.
        for worker in sorted(workers):
            with stopped(workers - {worker}):
                async with serve.client() as http:
                    assert (await http.get("/apps")).status_code == 200
                    assert (await http.get("/healthz")).json()["pid"] == worker
    finally:
        serve.child.proc.send_signal(signal.SIGTERM)
        returncode = await serve.child.finish()
    assert returncode == 0, serve.child.stderr()
    await assert_all_dead(workers)
    stderr = serve.child.stderr()
    assert stderr.count("Application shutdown complete.") == 2, stderr
    assert "Traceback" not in stderr


async def test_more_than_one_worker_needs_a_broker(spawn: Spawn, tmp_path: Path) -> None:
    cli = await spawn("serve", "--port", "0", "--workers", "2", data_dir=tmp_path / "data")
    assert await cli.finish() == 2, cli.output + cli.stderr()
    stderr = cli.stderr()
    assert "runforge: 2 workers need a broker: set RUNFORGE_BROKER_URL" in stderr
    assert "only through the broker" in stderr
    assert cli.output == ""  # refused before anything: no database, no socket, no banner
    assert not (tmp_path / "data").exists()

    bad = await spawn("serve", "--port", "0", data_dir=tmp_path / "data", env={"RUNFORGE_WORKERS": "0"})
    assert await bad.finish() == 2, bad.output + bad.stderr()
    assert "runforge: RUNFORGE_WORKERS must be at least 1, got 0" in bad.stderr()


async def test_an_unreachable_broker_is_refused_before_any_worker_starts(spawn: Spawn, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        dead = f"redis://127.0.0.1:{probe.getsockname()[1]}/0"
        env = {"RUNFORGE_BROKER_URL": dead}
        cli = await spawn("serve", "--port", "0", "--workers", "2", data_dir=tmp_path / "data", env=env)
        assert await cli.finish() == 1, cli.output + cli.stderr()
    assert "runforge: the broker (RUNFORGE_BROKER_URL) is unreachable" in cli.stderr()
    assert "Runforge listening" not in cli.output
    assert "Traceback" not in cli.stderr()


async def test_one_worker_id_for_several_workers_is_refused(spawn: Spawn, tmp_path: Path) -> None:
    env = {"RUNFORGE_BROKER_URL": "redis://127.0.0.1:6379/0", "RUNFORGE_WORKER_ID": "w1"}
    cli = await spawn("serve", "--port", "0", "--workers", "2", data_dir=tmp_path / "data", env=env)
    assert await cli.finish() == 2, cli.output + cli.stderr()
    assert "RUNFORGE_WORKER_ID names one worker, and 2 workers cannot share it" in cli.stderr()
    assert cli.output == ""
