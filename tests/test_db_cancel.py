"""A stop that cancels a run during a database call is an expected condition: one log line, no
traceback, and the pool goes on (it discards the interrupted connection).

The seam: a rollback that waits, holding open the moment a cancel interrupts a connection's
reset as it goes back to the pool (what a stop during a run's database call does).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiosqlite
import pytest
from sqlalchemy import text

from app.store.db import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'cancel.db'}")
    await database.create_schema()
    yield database
    await database.dispose()


async def test_a_cancel_during_a_connections_reset_is_one_line_without_a_traceback(
    db: Database, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    rolling_back = asyncio.Event()
    original = aiosqlite.Connection.rollback

    async def slow_rollback(self: aiosqlite.Connection) -> Any:
        rolling_back.set()
        await asyncio.sleep(0.2)  # the window a stop lands in
        return await original(self)

    monkeypatch.setattr(aiosqlite.Connection, "rollback", slow_rollback)

    async def read() -> None:
        async with db.read() as session:
            await session.execute(text("SELECT 1"))

    caplog.set_level(logging.INFO)
    task = asyncio.create_task(read())
    await rolling_back.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    monkeypatch.undo()
    records = [r for r in caplog.records if r.name.startswith("sqlalchemy")]
    assert [(r.levelname, r.exc_info) for r in records] == [("INFO", None)], [r.getMessage() for r in records]
    assert "cancelled" in records[0].getMessage()
    async with db.read() as session:  # the pool goes on
        assert (await session.execute(text("SELECT 1"))).scalar() == 1
