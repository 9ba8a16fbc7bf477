"""The database schema against the models' revision (Alembic): create, check, upgrade.

Four cases, told apart inside one transaction:

- empty database: ``create_all`` and stamp head. Alembic documents this shortcut, and it is what
  every test server does on its fresh SQLite file, so it must stay as cheap as ``create_all``;
  tests/test_migrations.py checks that the migrations build the same schema;
- ``alembic_version`` at head: nothing at all;
- ``alembic_version`` behind head, or tables but no ``alembic_version`` (a database made by
  ``create_all`` before migrations existed, i.e. revision 0001, the baseline): the server refuses
  to start (``SchemaOutdated``), and ``runforge db upgrade`` upgrades it. An upgrade is an
  operator's decision: it may rebuild tables, and code that several processes or hosts run
  against one database must not change its schema because one of them happened to start first;
- a revision this code does not know (written by a newer Runforge): refused (``SchemaUnknown``).

The caller's connection is handed to Alembic through ``config.attributes["connection"]``
(read by migrations/env.py), so everything, DDL included, commits or rolls back together.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

# Before Alembic is imported: it logs some twenty INFO lines at every start (a "setup plugin" line
# per plugin at import, "Context impl SQLiteImpl." per run), and the CLI logs at INFO. We log what
# happened to the schema ourselves; Alembic's warnings still show, and an application that set the
# "alembic" logger's level itself keeps it.
if logging.getLogger("alembic").level == logging.NOTSET:
    logging.getLogger("alembic").setLevel(logging.WARNING)

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection

from app.store.models import Base

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# The schema that create_all made before migrations existed (versions/0001_baseline.py).
BASELINE_REVISION = "0001"
# Any constant; it only has to be the same in every Runforge process sharing a PostgreSQL database.
PG_SCHEMA_LOCK_KEY = 0x52554E46  # "RUNF"

log = logging.getLogger(__name__)


class SchemaError(RuntimeError):
    """The database's schema is not one this Runforge can use; the message says what to do."""


class SchemaOutdated(SchemaError):
    """The database is behind this code's head revision: `runforge db upgrade` brings it there."""

    def __init__(self, current: str | None, head: str) -> None:
        self.current = current  # None: made before migrations (the baseline, 0001, in effect)
        self.head = head
        where = (
            f"was made before schema migrations (revision {BASELINE_REVISION} in effect)"
            if current is None
            else f"is at schema revision {current}"
        )
        super().__init__(
            f"the database {where}, and this Runforge needs revision {head}. Upgrade it with "
            "`runforge db upgrade` (same RUNFORGE_DATABASE_URL or RUNFORGE_DATA_DIR as the server; "
            "back the database up first if you may want to go back), then start again."
        )


class SchemaUnknown(SchemaError):
    """The database is at a revision this code does not ship: written by a newer Runforge."""

    def __init__(self, current: str) -> None:
        self.current = current
        super().__init__(
            f"the database is at schema revision {current!r}, which this Runforge does not know: "
            "it was written by a newer version. Run that version, or restore a backup."
        )


@dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database stands, read without changing anything (`runforge db current`)."""

    current: str | None  # the alembic_version row; None when there is none
    head: str
    has_tables: bool  # any of the models' tables (so: current None and tables = made before migrations)
    known: bool = True  # False: `current` is a revision this code does not ship

    @property
    def status(self) -> Literal["empty", "legacy", "current", "behind", "unknown"]:
        if self.current is None:
            return "legacy" if self.has_tables else "empty"
        if not self.known:
            return "unknown"
        return "current" if self.current == self.head else "behind"


@dataclass(frozen=True, slots=True)
class SchemaChange:
    """What ``prepare_schema`` did."""

    before: str | None  # the revision found; None: an empty database, or one made before migrations
    after: str
    action: Literal["created", "upgraded", "unchanged"]
    legacy: bool = False  # `before` is None because the database predates migrations (0001 in effect)


def head_revision() -> str:
    head = _script_directory().get_current_head()
    assert head is not None, "no revision in app/store/migrations/versions"
    return head


def inspect_schema(connection: Connection) -> SchemaState:
    """The database's revision against head, without writing anything."""
    current = MigrationContext.configure(connection).get_current_revision()
    return SchemaState(
        current=current,
        head=head_revision(),
        has_tables=current is not None or _has_app_tables(connection),
        known=current is None or _is_known(current),
    )


def prepare_schema(connection: Connection, *, upgrade: bool) -> SchemaChange:
    """Create an empty database at head; with ``upgrade``, also upgrade an older one, else refuse it.

    Raises ``SchemaOutdated`` (behind head, ``upgrade`` false) or ``SchemaUnknown`` (a newer
    revision). Call inside a transaction (``conn.run_sync`` in ``engine.begin``).
    """
    _serialize_schema_changes(connection)
    context = MigrationContext.configure(connection)
    current = context.get_current_revision()
    head = head_revision()
    if current == head:
        return SchemaChange(before=head, after=head, action="unchanged")
    legacy = current is None and _has_app_tables(connection)
    if current is None and not legacy:
        _create_at_head(connection, context)
        log.info("created the database schema at revision %s", head)
        return SchemaChange(before=None, after=head, action="created")
    if current is not None and not _is_known(current):
        raise SchemaUnknown(current)
    if not upgrade:
        raise SchemaOutdated(current, head)
    if legacy:
        log.info("database made before schema migrations: taking it as revision %s", BASELINE_REVISION)
        context.stamp(_script_directory(), BASELINE_REVISION)
    log.info("upgrading the database schema from revision %s to %s", current or BASELINE_REVISION, head)
    command.upgrade(alembic_config(connection), "head")
    return SchemaChange(before=current, after=head, action="upgraded", legacy=legacy)


def upgrade_schema(connection: Connection) -> SchemaChange:
    """Create or upgrade the schema to head (``runforge db upgrade``)."""
    return prepare_schema(connection, upgrade=True)


def _create_at_head(connection: Connection, context: MigrationContext) -> None:
    # No per-table existence checks: we just saw there are none, and we hold the write lock.
    # Measured: the checks were half of create_all's time on a fresh SQLite file.
    Base.metadata.create_all(connection, checkfirst=False)
    # What `command.stamp(config, "head")` does, minus loading env.py and the revision files
    # again: this runs at every server start on a fresh database (hundreds per test run).
    context.stamp(_script_directory(), "head")


def _is_known(revision: str) -> bool:
    try:
        return _script_directory().get_revision(revision) is not None
    except CommandError:
        return False


def alembic_config(connection: Connection | None = None) -> Config:
    """Alembic's configuration, in code: no alembic.ini, and no logging setup (the app does that)."""
    config = Config()
    # The value goes through ConfigParser interpolation: a literal % must be doubled.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    if connection is not None:
        config.attributes["connection"] = connection
    return config


@functools.cache
def _script_directory() -> ScriptDirectory:
    """The revisions shipped with this code, read once: the files do not change at run time."""
    return ScriptDirectory.from_config(alembic_config())


def _has_app_tables(connection: Connection) -> bool:
    return bool(set(inspect(connection).get_table_names()) & set(Base.metadata.tables))


def _serialize_schema_changes(connection: Connection) -> None:
    """Two processes starting at once must not both create or upgrade the schema.

    SQLite needs nothing: our transactions start with BEGIN IMMEDIATE, which takes the write lock
    before we look. PostgreSQL takes a transaction-scoped advisory lock, released at commit.
    """
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_SCHEMA_LOCK_KEY})
