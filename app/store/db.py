"""Engine and sessions.

SQLite runs in WAL mode with a busy timeout, and every writing transaction starts with
``BEGIN IMMEDIATE``: measured here, the driver's default mode silently lost updates under
concurrent read-modify-write, and a plain ``BEGIN`` failed most of them with "database is
locked" despite the busy timeout. This is SQLAlchemy's documented recipe for pysqlite/aiosqlite.
Reads use a deferred ``BEGIN`` (``Database.read``): in WAL mode they never wait for writers.

Run tasks open their own short sessions (``async with db.session() as s``) and never hold
a request-scoped session across a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, Float, event, func, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, OperationalError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from app.store.private import make_private_file

if TYPE_CHECKING:
    from app.store.schema import SchemaChange, SchemaState

SQLITE_BUSY_TIMEOUT_MS = 5000
SCHEMA_ATTEMPTS = 6  # create_schema on a locked fresh SQLite file: waits 0.05 s, 0.1 s, ... 1.6 s
READ_ONLY_OPTION = "runforge_read_only"
# Pooled connections per process (and as many again in bursts) on PostgreSQL; SQLite has no pool limit.
SERVER_POOL_SIZE = 20
# A pooled PostgreSQL connection idle for longer than this is pinged before it is used again.
PING_IDLE_S = 1.0
_CHECKED_IN = "runforge_checked_in_at"


class Database:
    def __init__(self, url: str, *, pool_size: int = SERVER_POOL_SIZE) -> None:
        self.url = url
        self.is_sqlite = make_url(url).get_backend_name() == "sqlite"
        self.engine: AsyncEngine = create_async_engine(url, **self._engine_options(pool_size))
        _quiet_cancelled_resets(self.engine)
        if self.is_sqlite:
            _install_sqlite_recipe(self.engine)
        else:
            _install_idle_ping(self.engine)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Queue writers here, in order, instead of letting
        # them sleep in SQLite's busy handler while holding pooled connections (measured: a
        # burst of 200 run starts left most of the pool asleep and reads starved).
        self._write_lock: contextlib.AbstractAsyncContextManager[Any] = (
            asyncio.Lock() if self.is_sqlite else contextlib.nullcontext()
        )
        # Reads start a deferred transaction: in WAL mode they never wait for writers.
        read_engine = self.engine.execution_options(**{READ_ONLY_OPTION: True})
        self._read_sessions = async_sessionmaker(read_engine, expire_on_commit=False)

    def _engine_options(self, pool_size: int) -> dict[str, Any]:
        if self.is_sqlite:
            return {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}}
        # A server database: every run holds a connection for a few milliseconds at its start and
        # end, and a burst of hundreds of starts kept SQLAlchemy's default 5 (+10) all in use.
        # No pool_pre_ping: see _install_idle_ping.
        return {"pool_size": pool_size, "max_overflow": pool_size}

    async def create_schema(self, *, upgrade: bool = False) -> SchemaChange:
        """Create an empty database at head; refuse (or, with ``upgrade``, upgrade) an older one.

        Server start and `runforge user add` call it as is: they raise ``SchemaOutdated`` on a
        database behind head and ``SchemaUnknown`` on one from a newer Runforge (both
        ``SchemaError``, in app/store/schema.py); `runforge db upgrade` passes ``upgrade=True``.
        """
        # Imported here: Alembic takes ~130 ms to import, which CLI commands that never open
        # the database (`runforge run`, `templates`) should not pay.
        from app.store.schema import prepare_schema

        if self.is_sqlite:
            database = make_url(self.url).database
            if database and database != ":memory:":
                await asyncio.to_thread(_make_private_database, Path(database))
        for attempt in range(SCHEMA_ATTEMPTS):
            try:
                async with self.engine.begin() as conn:
                    return await conn.run_sync(functools.partial(prepare_schema, upgrade=upgrade))
            except OperationalError as exc:
                # Several processes opening one fresh SQLite file at once: one of them wins the
                # switch to WAL or the schema's write lock, and SQLite refuses the others at
                # once instead of making them wait. Measured in tests/test_migrations.py.
                if not (self.is_sqlite and _is_locked(exc)) or attempt == SCHEMA_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def schema_state(self) -> SchemaState:
        """The database's revision against head, changing nothing (a missing SQLite file stays missing)."""
        from app.store.schema import SchemaState, head_revision, inspect_schema

        if self.is_sqlite:
            database = make_url(self.url).database
            if database and database != ":memory:" and not await asyncio.to_thread(Path(database).exists):
                return SchemaState(current=None, head=head_revision(), has_tables=False)
        # A deferred BEGIN on SQLite (READ_ONLY_OPTION): looking takes no write lock.
        async with self.engine.execution_options(**{READ_ONLY_OPTION: True}).connect() as conn:
            return await conn.run_sync(inspect_schema)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A short unit of work: commits on success, rolls back on error."""
        async with self._write_lock, self._sessions() as session, session.begin():
            yield session

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncConnection]:
        """A short write with Core statements on a bare connection: every run's two writes.

        Measured here: an ORM session costs ~0.4 ms more event-loop CPU per transaction than a
        bare connection (unit of work, ORM-enabled statements), and each run writes its row
        and then its outcome.
        """
        async with self._write_lock, self.engine.begin() as conn:
            yield conn

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        """A read-only unit of work (never takes SQLite's write lock)."""
        async with self._read_sessions() as session, session.begin():
            yield session

    def clock(self) -> ColumnElement[float]:
        """Now, in seconds since the epoch, on the database's clock: one clock for every host."""
        if self.is_sqlite:
            # julianday('now') has millisecond resolution; 2440587.5 is the epoch's Julian day.
            return (func.julianday("now") - 2440587.5) * 86400.0
        return func.extract("epoch", func.clock_timestamp()).cast(Float)

    async def reachable(self) -> bool:
        """Whether the database answers a query now (for readiness probes)."""
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (OSError, SQLAlchemyError):
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()


def _install_idle_ping(engine: AsyncEngine) -> None:
    """Ping a pooled connection before use only when it has been idle for PING_IDLE_S.

    ``pool_pre_ping`` pings at every checkout, and on asyncpg a ping is three round trips (BEGIN,
    a query, ROLLBACK): measured with 500 runs starting on two workers, those made up most of
    the database statements, and each is a write and a wake-up on a machine short of CPU. A
    connection back in the pool a moment ago was fine a moment ago; one that sat idle may have
    been cut (a server restart, a proxy's idle timeout). A failed ping makes the pool drop that
    connection and check out another (SQLAlchemy's documented custom pessimistic recipe).
    """
    sync_engine = engine.sync_engine

    @event.listens_for(sync_engine, "checkin")
    def _checked_in(_dbapi_connection: Any, record: Any) -> None:
        record.info[_CHECKED_IN] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _checked_out(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        checked_in = record.info.get(_CHECKED_IN)  # None: a new connection, just made
        if checked_in is None or time.monotonic() - checked_in < PING_IDLE_S:
            return
        try:
            sync_engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            raise DisconnectionError(f"a pooled connection failed its ping: {exc}") from exc


class _CancelledReset(logging.Filter):
    """A stop cancels a run's task; when that lands while a connection is reset on its way back to
    the pool, SQLAlchemy logs the CancelledError with a traceback, then discards the connection.
    That is all there is to it: an expected condition, said in one line (with the run's ids, which
    the log context adds) instead of a traceback that would make the log untrustworthy."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError) and record.msg == "Exception during reset or similar":
            record.levelno, record.levelname = logging.INFO, logging.getLevelName(logging.INFO)
            record.msg, record.args = "a database call was cancelled (a stop); its connection is discarded", ()
            record.exc_info, record.exc_text = None, None
        return True


_CANCELLED_RESET = _CancelledReset()


def _quiet_cancelled_resets(engine: AsyncEngine) -> None:
    pool_logger = engine.sync_engine.pool.logger
    if isinstance(pool_logger, logging.Logger) and _CANCELLED_RESET not in pool_logger.filters:
        pool_logger.addFilter(_CANCELLED_RESET)


def _is_locked(exc: OperationalError) -> bool:
    return "database is locked" in str(exc.orig)


def _install_sqlite_recipe(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Stop the driver from emitting its own (deferred) BEGIN; we emit BEGIN IMMEDIATE.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        # WAL is a property of the file: switch only once. Switching takes an exclusive lock,
        # which fails at once ("database is locked") while another process is creating the
        # same fresh file (create_schema retries that).
        cursor.execute("PRAGMA journal_mode")
        if str(cursor.fetchone()[0]).lower() != "wal":
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY_OPTION, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def _make_private_database(database: Path) -> None:
    database.parent.mkdir(parents=True, exist_ok=True)
    make_private_file(database)
