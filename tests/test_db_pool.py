"""The PostgreSQL pool: a connection is pinged before use only after sitting idle, and one that
the server cut meanwhile is replaced instead of failing the request (real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import text

from app.store import db as db_module
from app.store.db import Database
from tests.services import pg_admin


@pytest.fixture
async def pg(pg_database_url: str) -> AsyncIterator[Database]:
    database = Database(pg_database_url)
    try:
        yield database
    finally:
        await database.dispose()


def count_pings(database: Database, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    dialect = database.engine.sync_engine.dialect
    real_ping = dialect.do_ping
    pings: list[int] = []

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return bool(real_ping(dbapi_connection))

    monkeypatch.setattr(dialect, "do_ping", counted)
    return pings


async def backend_pid(database: Database) -> int:
    async with database.engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def test_a_connection_back_in_the_pool_a_moment_ago_is_used_without_a_ping(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    pings = count_pings(pg, monkeypatch)
    first = await backend_pid(pg)
    assert await backend_pid(pg) == first  # the same pooled connection...
    assert pings == []  # ...reused at once: no round trips spent on a ping


async def test_a_connection_cut_while_idle_in_the_pool_is_replaced_before_use(
    pg: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db_module, "PING_IDLE_S", 0.0)  # every reuse counts as after a long idle
    pings = count_pings(pg, monkeypatch)
    cut = await backend_pid(pg)
    admin = await pg_admin("SELECT 1")
    try:
        async with admin.connect() as conn:  # as a server restart or a proxy's idle timeout would
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": cut})
            gone = text("SELECT count(*) = 0 FROM pg_stat_activity WHERE pid = :pid")
            async with asyncio.timeout(10):
                # The server's own state: there is no event to await, so poll it.
                while not (await conn.execute(gone, {"pid": cut})).scalar_one():  # noqa: ASYNC110
                    await asyncio.sleep(0.01)
    finally:
        await admin.dispose()
    assert await backend_pid(pg) != cut  # no error: the ping failed, the pool made a new one
    assert pings == [1]
