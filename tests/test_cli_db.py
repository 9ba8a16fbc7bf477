"""`runforge db upgrade` / `db current`, and `serve` / `user add` refusing a database behind head, as real processes."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import text

from tests.cli_kit import Child, Spawn, cli_children, start_serve
from tests.test_migrations import HEAD, LEGACY, in_transaction, open_database, upgrade_to


@pytest.fixture
async def spawn(tmp_path: Path) -> AsyncIterator[Spawn]:
    async with cli_children(tmp_path) as start:
        yield start


def sqlite_url(data_dir: Path) -> str:
    """The database `runforge` uses for this data directory when RUNFORGE_DATABASE_URL is unset."""
    return f"sqlite+aiosqlite:///{(data_dir / 'runforge.db').resolve()}"


async def make_outdated(url: str, kind: str) -> None:
    """A database as an older Runforge left it: at revision 0002, or made before migrations (legacy)."""
    db = open_database(url)
    try:
        if kind == "legacy":
            await in_transaction(db, LEGACY.create_all)
        else:
            await in_transaction(db, upgrade_to(kind))
    finally:
        await db.dispose()


async def test_db_upgrade_creates_then_changes_nothing(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    current = await spawn("db", "current", data_dir=data_dir)
    assert await current.finish() == 1, current.stderr()
    assert "current: none (no schema yet" in current.output
    assert f"head: {HEAD}\n" in current.output
    assert not (data_dir / "runforge.db").exists()  # looking created nothing

    upgrade = await spawn("db", "upgrade", data_dir=data_dir)
    assert await upgrade.finish() == 0, upgrade.stderr()
    assert f"database: {sqlite_url(data_dir)}\n" in upgrade.output
    assert f"created the schema at revision {HEAD} (head)" in upgrade.output

    again = await spawn("db", "upgrade", data_dir=data_dir)
    assert await again.finish() == 0, again.stderr()
    assert f"already at revision {HEAD} (head): nothing to do" in again.output

    current = await spawn("db", "current", data_dir=data_dir)
    assert await current.finish() == 0, current.stderr()
    assert f"current: {HEAD} (head)\nhead: {HEAD}\n" in current.output


@pytest.mark.parametrize(
    ("kind", "found", "upgraded_from"),
    [
        ("0002", "is at schema revision 0002", "0002"),
        ("legacy", "was made before schema migrations (revision 0001 in effect)", "0001"),
    ],
)
async def test_serve_refuses_a_database_behind_head_until_db_upgrade(
    spawn: Spawn, tmp_path: Path, kind: str, found: str, upgraded_from: str
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    await make_outdated(sqlite_url(data_dir), kind)

    # Three commands that only look, together (each process takes ~1 s to start).
    serve, user_add, current = [
        await spawn(*command, data_dir=data_dir)
        for command in (("serve", "--port", "0"), ("user", "add", "bob"), ("db", "current"))
    ]
    assert await asyncio.gather(serve.finish(), user_add.finish(), current.finish()) == [1, 1, 1]
    for refused in (serve, user_add):
        stderr = refused.stderr()
        assert f"runforge: the database {found}, and this Runforge needs revision {HEAD}." in stderr
        assert "`runforge db upgrade`" in stderr
        assert "Traceback" not in stderr
    assert "Runforge listening" not in serve.output  # refused before binding
    assert "created user" not in user_add.output

    assert f"head: {HEAD}\n" in current.output
    assert "runforge db upgrade" in current.output

    upgrade = await spawn("db", "upgrade", data_dir=data_dir)
    assert await upgrade.finish() == 0, upgrade.stderr()
    assert f"upgraded the schema from revision {upgraded_from}" in upgrade.output
    assert f"to {HEAD} (head)" in upgrade.output

    # What was refused now works (a server start on it: test_db_commands_and_serve_on_postgresql).
    user_add = await spawn("user", "add", "bob", data_dir=data_dir)
    assert await user_add.finish() == 0, user_add.stderr()
    assert "created user bob" in user_add.output


async def test_a_database_from_a_newer_runforge_is_refused(spawn: Spawn, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    upgrade = await spawn("db", "upgrade", data_dir=data_dir)
    assert await upgrade.finish() == 0, upgrade.stderr()
    db = open_database(sqlite_url(data_dir))
    try:
        await in_transaction(db, lambda c: c.execute(text("UPDATE alembic_version SET version_num = '9999'")))
    finally:
        await db.dispose()

    current, upgrade, serve = [
        await spawn(*command, data_dir=data_dir)
        for command in (("db", "current"), ("db", "upgrade"), ("serve", "--port", "0"))
    ]
    assert await asyncio.gather(current.finish(), upgrade.finish(), serve.finish()) == [1, 1, 1]
    assert "current: 9999 (unknown to this version" in current.output
    for refused in (upgrade, serve):
        assert "runforge: the database is at schema revision '9999', which this Runforge does not know" in (
            refused.stderr()
        )
        assert "Traceback" not in refused.stderr()


async def test_db_commands_say_when_the_database_is_unreachable(spawn: Spawn, tmp_path: Path) -> None:
    url = "postgresql+asyncpg://postgres:secret@127.0.0.1:1/nothing"  # port 1: nothing listens
    cli = await spawn("db", "current", data_dir=tmp_path / "data", env={"RUNFORGE_DATABASE_URL": url})
    assert await cli.finish() == 1, cli.output + cli.stderr()
    assert "runforge: cannot use the database postgresql+asyncpg://postgres:***@127.0.0.1:1/nothing: " in cli.stderr()
    assert "secret" not in cli.output + cli.stderr()
    assert "Traceback" not in cli.stderr()


async def test_db_commands_and_serve_on_postgresql(spawn: Spawn, tmp_path: Path, pg_database_url: str) -> None:
    data_dir = tmp_path / "data"
    env = {"RUNFORGE_DATABASE_URL": pg_database_url}
    current = await spawn("db", "current", data_dir=data_dir, env=env)
    assert await current.finish() == 1, current.stderr()
    assert f"database: {pg_database_url}\n" in current.output
    assert "current: none (no schema yet" in current.output

    await make_outdated(pg_database_url, "0002")
    refused = await spawn("serve", "--port", "0", data_dir=data_dir, env=env)
    assert await refused.finish() == 1, refused.output + refused.stderr()
    assert f"runforge: the database is at schema revision 0002, and this Runforge needs revision {HEAD}." in (
        refused.stderr()
    )

    upgrade = await spawn("db", "upgrade", data_dir=data_dir, env=env)
    assert await upgrade.finish() == 0, upgrade.stderr()
    assert f"upgraded the schema from revision 0002 to {HEAD} (head)" in upgrade.output
    current = await spawn("db", "current", data_dir=data_dir, env=env)
    assert await current.finish() == 0, current.stderr()
    assert f"current: {HEAD} (head)" in current.output

    # The server runs on it: the local user and its login URL live in PostgreSQL now.
    serve = await start_serve(_with_env(spawn, env), data_dir)
    assert serve.token is not None
    async with serve.client() as http:
        created = await http.post("/apps", json={"name": "on postgres"})
        assert created.status_code == 201, created.text
        assert [a["id"] for a in (await http.get("/apps")).json()] == [created.json()["id"]]
    serve.child.proc.send_signal(signal.SIGTERM)
    assert await serve.child.finish() in (0, -signal.SIGTERM), serve.child.stderr()
    assert not (data_dir / "runforge.db").exists()


def _with_env(spawn: Spawn, env: dict[str, str]) -> Spawn:
    async def start(*args: str, data_dir: Path) -> Child:
        return await spawn(*args, data_dir=data_dir, env=env)

    return start
