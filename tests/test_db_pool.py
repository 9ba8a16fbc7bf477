"""The PostgreSQL pool: a connection is pinged before use only after sitting idle, and one that
the server cut meanwhile is replaced instead of failing the request (real PostgreSQL). Also what
PostgreSQL refuses that SQLite takes: NUL in text."""

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


async def test_free_text_with_nul_is_stored_without_it(pg: Database) -> None:
    """PostgreSQL's text type refuses NUL: a model's answer or a provider's error message with
    one is saved without it (app/store/models.py NulFreeText), by the repo's own statements."""
    from sqlalchemy import select

    from app.store import repo
    from app.store.models import App, ChatMessage, RunRow, User

    await pg.create_schema()
    async with pg.session() as s:
        for row in (
            User(id="u1", name="u1", token_hash="h" * 64),
            App(id="a1", owner_id="u1", name="app", code_gen_type="html"),
        ):
            s.add(row)
            await s.flush()  # no relationships: the unit of work does not order the inserts
        s.add(RunRow(id="r1", app_id="a1", user_id="u1", message="hi\x00", status="running"))
    outcome = {f"new_{name}": None for name in repo._OUTCOME_FIELDS} | {
        "run_id": "r1",
        "new_status": "failed",
        "new_error_code": "upstream_error",
        "new_error_message": "bad\x00gateway",
        **{f"new_{name}": 0 for name in ("steps", "tool_calls_executed", "tool_calls_skipped", "last_seq")},
        "new_rolled_back": False,
    }
    async with pg.write() as conn:
        await conn.execute(repo._RECORD_OUTCOME, outcome)
        await conn.execute(repo._INSERT_MESSAGES, [{"app_id": "a1", "run_id": "r1", "role": "ai", "content": "a\x00b"}])
    async with pg.read() as s:
        run = await s.get(RunRow, "r1")
        assert run is not None
        assert (run.message, run.error_message) == ("hi", "badgateway")
        assert (await s.scalars(select(ChatMessage.content))).all() == ["ab"]
