"""Schema creation and upgrades (app/store/schema.py, app/store/migrations), on real database files."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    event,
    inspect,
    select,
    text,
)
from sqlalchemy.engine import Connection

from app.store.db import Database
from app.store.models import Base, RunRow, User
from app.store.schema import BASELINE_REVISION, SchemaOutdated, SchemaUnknown, alembic_config
from tests.services import PG_URL, pg_admin

HEAD = ScriptDirectory.from_config(alembic_config()).get_current_head()
NOW = datetime(2026, 1, 2, 3, 4, 5)
T = TypeVar("T")

# The schema as `Base.metadata.create_all` made it before migrations existed (app/store/models.py at the
# commit before 0001), frozen here: databases like this exist and must keep upgrading.
LEGACY = MetaData()
Table(
    "users",
    LEGACY,
    Column("id", String(32), primary_key=True),
    Column("name", String(64), nullable=False),
    Column("token_hash", String(64), nullable=False),
    Column("created_at", DateTime, nullable=False),
    UniqueConstraint("name"),
    UniqueConstraint("token_hash"),
)
Table(
    "apps",
    LEGACY,
    Column("id", String(32), primary_key=True),
    Column("owner_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("name", String(200), nullable=False),
    Column("code_gen_type", String(32), nullable=False),
    Column("init_prompt", Text),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
)
Table(
    "chat_messages",
    LEGACY,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app_id", ForeignKey("apps.id", ondelete="CASCADE"), nullable=False),
    Column("run_id", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("content", Text, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Index("ix_chat_messages_app_id_id", "app_id", "id"),
)
Table(
    "runs",
    LEGACY,
    Column("id", String(64), primary_key=True),
    Column("app_id", ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("user_id", ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True),
    Column("message", Text, nullable=False),
    Column("status", String(16), nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("started_at", DateTime),
    Column("stop_requested_at", DateTime),
    Column("ended_at", DateTime),
    Column("stop_reason", String(32)),
    Column("finish_reason", String(32)),
    Column("error_code", String(64)),
    Column("error_message", Text),
    Column("steps", Integer, nullable=False),
    Column("tool_calls_executed", Integer, nullable=False),
    Column("tool_calls_skipped", Integer, nullable=False),
    Column("usage", JSON),
    Column("last_seq", Integer, nullable=False),
    Index("ix_runs_status", "status"),
)
LEGACY_ROWS: dict[str, dict[str, Any]] = {
    "users": {"id": "u1", "name": "alice", "token_hash": "h" * 64, "created_at": NOW},
    "apps": {
        "id": "a1",
        "owner_id": "u1",
        "name": "todo",
        "code_gen_type": "html",
        "init_prompt": "make a todo app",
        "created_at": NOW,
        "updated_at": NOW,
    },
    "chat_messages": {"app_id": "a1", "run_id": "r1", "role": "user", "content": "hi", "created_at": NOW},
    "runs": {
        "id": "r1",
        "app_id": "a1",
        "user_id": "u1",
        "message": "make a todo app",
        "status": "completed",
        "created_at": NOW,
        "ended_at": NOW,
        "finish_reason": "stop",
        "steps": 3,
        "tool_calls_executed": 2,
        "tool_calls_skipped": 1,
        "usage": {"prompt_tokens": 10, "completion_tokens": 20},
        "last_seq": 42,
    },
}


# -- backends --------------------------------------------------------------------------------


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'runforge.db'}"


@pytest.fixture
async def pg_url() -> AsyncIterator[str]:
    """A fresh PostgreSQL schema, dropped afterwards, as ``URL#schema`` (see open_database)."""
    schema = f"runforge_mig_{uuid.uuid4().hex[:12]}"
    engine = await pg_admin(f'CREATE SCHEMA "{schema}"')
    try:
        yield f"{PG_URL}#{schema}"
    finally:
        async with engine.connect() as conn:
            await conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        await engine.dispose()


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest) -> str:
    url: str = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")
    return url


def open_database(url: str) -> Database:
    """The server's Database; for PostgreSQL, confined to the test's schema (`URL#schema`)."""
    url, _, schema = url.partition("#")
    db = Database(url)
    if schema:
        _use_search_path(db, schema)
    return db


def _use_search_path(db: Database, schema: str) -> None:
    # SQLAlchemy's documented recipe; insert=True so it runs before the dialect reads current_schema().
    @event.listens_for(db.engine.sync_engine, "connect", insert=True)
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        cursor.execute(f'SET SESSION search_path = "{schema}"')
        cursor.close()
        dbapi_connection.autocommit = autocommit


async def in_transaction(db: Database, fn: Callable[[Connection], T]) -> T:
    async with db.engine.begin() as conn:
        return await conn.run_sync(fn)


def revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def drift(conn: Connection, metadata: MetaData) -> list[Any]:
    """Autogenerate's differences between the database and `metadata`: types and server defaults included.

    Nothing is filtered out: on SQLite and PostgreSQL alike the comparison came out empty, so any
    difference it reports is real drift between the models and the revision files.
    """
    context = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
    return list(compare_metadata(context, metadata))


def upgrade_to(target: str) -> Callable[[Connection], None]:
    """Run the revision files themselves (not the create_all shortcut) up to `target`."""
    return lambda conn: command.upgrade(alembic_config(conn), target)


def downgrade_to(target: str) -> Callable[[Connection], None]:
    return lambda conn: command.downgrade(alembic_config(conn), target)


# -- tests -----------------------------------------------------------------------------------


async def test_empty_database_is_created_at_head(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    try:
        await db.create_schema()
        columns = await in_transaction(db, lambda c: {col["name"]: col for col in inspect(c).get_columns("runs")})
        assert columns["app_id"]["nullable"] is True
        assert columns["kind"]["nullable"] is False
        assert "code" in str(columns["kind"]["default"])
        assert await in_transaction(db, revision) == HEAD
    finally:
        await db.dispose()


async def test_second_start_changes_nothing(sqlite_url: str) -> None:
    first = open_database(sqlite_url)
    await first.create_schema()
    await first.dispose()
    db = open_database(sqlite_url)
    statements: list[str] = []
    event.listen(db.engine.sync_engine, "before_cursor_execute", lambda *a: statements.append(a[2]))
    try:
        await db.create_schema()
    finally:
        await db.dispose()
    writes = [s for s in statements if s.split(None, 1)[0].upper() in {"CREATE", "ALTER", "DROP", "INSERT", "UPDATE"}]
    assert writes == []


async def test_concurrent_first_starts_create_the_schema_once(backend_url: str) -> None:
    """Servers sharing a database start together: one creates the schema, the others find it made."""
    databases = [open_database(backend_url) for _ in range(3)]
    try:
        await asyncio.gather(*(db.create_schema() for db in databases))
        versions = await in_transaction(databases[0], lambda c: c.execute(text("SELECT * FROM alembic_version")).all())
        assert [tuple(row) for row in versions] == [(HEAD,)]
    finally:
        for db in databases:
            await db.dispose()


async def test_legacy_database_is_upgraded_in_place(backend_url: str) -> None:
    await _create_legacy_database(backend_url)
    db = open_database(backend_url)
    try:
        change = await db.create_schema(upgrade=True)
        assert (change.action, change.before, change.after, change.legacy) == ("upgraded", None, HEAD, True)
        assert await in_transaction(db, revision) == HEAD
        run = await in_transaction(db, lambda c: c.execute(select(LEGACY.tables["runs"])).one())
        assert run._asdict() == _legacy_run()
        assert await in_transaction(db, lambda c: c.execute(text("SELECT kind FROM runs")).scalar_one()) == "code"
        messages = await in_transaction(
            db, lambda c: c.execute(text("SELECT content FROM chat_messages")).scalars().all()
        )
        assert messages == ["hi"]
        await _assert_chat_runs_fit(db)
        await _assert_cascades_survived(db)
    finally:
        await db.dispose()


async def test_legacy_sqlite_file_stays_consistent(sqlite_url: str) -> None:
    """The table rebuild ran with foreign keys on: nothing dangling, nothing corrupt, indexes kept."""
    await _create_legacy_database(sqlite_url)
    db = open_database(sqlite_url)
    try:
        await db.create_schema(upgrade=True)
        checks = await in_transaction(db, _sqlite_checks)
    finally:
        await db.dispose()
    assert checks == {"foreign_key_check": [], "integrity_check": [("ok",)]}


async def test_migrations_build_the_models_schema(backend_url: str) -> None:
    """Drift check: the revision files alone, from an empty database, give exactly Base.metadata."""
    db = open_database(backend_url)
    try:
        await in_transaction(db, upgrade_to("head"))
        assert await in_transaction(db, lambda c: drift(c, Base.metadata)) == []
    finally:
        await db.dispose()


async def test_create_all_shortcut_builds_the_same_schema(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    try:
        await db.create_schema()
        assert await in_transaction(db, lambda c: drift(c, Base.metadata)) == []
    finally:
        await db.dispose()


async def test_baseline_is_the_legacy_schema_and_downgrade_returns_to_it(backend_url: str) -> None:
    db = open_database(backend_url)
    try:
        await in_transaction(db, upgrade_to(BASELINE_REVISION))
        assert await in_transaction(db, lambda c: drift(c, LEGACY)) == []
        await in_transaction(db, upgrade_to("head"))
        await in_transaction(db, downgrade_to(BASELINE_REVISION))
        assert await in_transaction(db, lambda c: drift(c, LEGACY)) == []
    finally:
        await db.dispose()


async def test_unknown_revision_fails_with_a_clear_message(sqlite_url: str) -> None:
    db = open_database(sqlite_url)
    try:
        await db.create_schema()
        await in_transaction(db, lambda c: c.execute(text("UPDATE alembic_version SET version_num = '9999'")))
        with pytest.raises(SchemaUnknown, match="newer version"):
            await db.create_schema()
        with pytest.raises(SchemaUnknown, match="newer version"):
            await db.create_schema(upgrade=True)
        assert (await db.schema_state()).status == "unknown"
    finally:
        await db.dispose()


async def test_a_database_behind_head_is_refused_and_left_as_it_was(backend_url: str) -> None:
    """Server start (no ``upgrade``) never changes the schema of an existing database."""
    db = open_database(backend_url)
    try:
        await in_transaction(db, upgrade_to("0002"))
        with pytest.raises(SchemaOutdated) as refused:
            await db.create_schema()
        assert (refused.value.current, refused.value.head) == ("0002", HEAD)
        message = str(refused.value)
        assert "0002" in message
        assert HEAD in message
        assert "`runforge db upgrade`" in message
        assert await in_transaction(db, revision) == "0002"
        assert (await db.schema_state()).status == "behind"

        change = await db.create_schema(upgrade=True)
        assert (change.action, change.before, change.after) == ("upgraded", "0002", HEAD)
        assert (await db.create_schema()).action == "unchanged"
        assert (await db.schema_state()).status == "current"
    finally:
        await db.dispose()


async def test_a_legacy_database_is_refused_untouched(backend_url: str) -> None:
    await _create_legacy_database(backend_url)
    db = open_database(backend_url)
    try:
        with pytest.raises(SchemaOutdated, match="made before schema migrations") as refused:
            await db.create_schema()
        assert refused.value.current is None
        assert await in_transaction(db, revision) is None
        assert await in_transaction(db, lambda c: drift(c, LEGACY)) == []
        assert (await db.schema_state()).status == "legacy"
    finally:
        await db.dispose()


async def test_schema_state_of_an_empty_database_creates_nothing(tmp_path: Path) -> None:
    path = tmp_path / "absent" / "runforge.db"
    db = open_database(f"sqlite+aiosqlite:///{path}")
    try:
        state = await db.schema_state()
    finally:
        await db.dispose()
    assert (state.status, state.current, state.head) == ("empty", None, HEAD)
    assert not path.parent.exists()


# -- helpers ---------------------------------------------------------------------------------


async def _create_legacy_database(url: str) -> None:
    """What the server did before migrations: create_all of the legacy tables, then some rows."""
    db = open_database(url)
    try:
        await in_transaction(db, LEGACY.create_all)
        for name, row in LEGACY_ROWS.items():
            await in_transaction(db, lambda c, name=name, row=row: c.execute(LEGACY.tables[name].insert(), row))
    finally:
        await db.dispose()


def _legacy_run() -> dict[str, Any]:
    """The run row as inserted, with NULL for the columns it left out."""
    return {col.name: LEGACY_ROWS["runs"].get(col.name) for col in LEGACY.tables["runs"].columns}


async def _assert_chat_runs_fit(db: Database) -> None:
    async with db.session() as s:
        s.add(RunRow(id="chat-1", kind="chat", app_id=None, user_id="u1", message="hello", status="completed"))
    async with db.read() as s:
        chat = await s.get(RunRow, "chat-1")
        assert chat is not None
        assert (chat.kind, chat.app_id) == ("chat", None)


async def _assert_cascades_survived(db: Database) -> None:
    """The rebuilt runs table kept its ON DELETE CASCADE foreign keys."""
    async with db.session() as s:
        await s.execute(delete(User).where(User.id == "u1"))
    async with db.read() as s:
        assert (await s.execute(select(RunRow.id))).all() == []


def _sqlite_checks(conn: Connection) -> dict[str, Any]:
    indexes = {index["name"] for index in inspect(conn).get_indexes("runs")}
    assert indexes == {"ix_runs_app_id", "ix_runs_user_id", "ix_runs_status", "ix_runs_owner_worker"}
    return {
        "foreign_key_check": [tuple(r) for r in conn.exec_driver_sql("PRAGMA foreign_key_check").all()],
        "integrity_check": [tuple(r) for r in conn.exec_driver_sql("PRAGMA integrity_check").all()],
    }
