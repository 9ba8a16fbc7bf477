"""Bring the database schema to the models' revision at start (Alembic).

Three cases, told apart inside one transaction:

- empty database: ``create_all`` and stamp head. Alembic documents this shortcut, and it is what
  every test server does on its fresh SQLite file, so it must stay as cheap as ``create_all``;
  tests/test_migrations.py checks that the migrations build the same schema;
- ``alembic_version`` present: upgrade to head (nothing at all when already there);
- tables but no ``alembic_version``: a database made by ``create_all`` before migrations existed,
  i.e. revision 0001 (the baseline): stamp it so, then upgrade.

The caller's connection is handed to Alembic through ``config.attributes["connection"]``
(read by migrations/env.py), so everything, DDL included, commits or rolls back together.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

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


def upgrade_schema(connection: Connection) -> None:
    """Create or upgrade the schema to head. Call inside a transaction (``conn.run_sync`` in ``engine.begin``)."""
    _serialize_schema_changes(connection)
    context = MigrationContext.configure(connection)
    current = context.get_current_revision()
    head = _script_directory().get_current_head()
    if current is None and not _has_app_tables(connection):
        _create_at_head(connection, context)
        log.info("created the database schema at revision %s", head)
        return
    if current is None:
        log.info("database made before schema migrations: taking it as revision %s", BASELINE_REVISION)
        context.stamp(_script_directory(), BASELINE_REVISION)
    elif current == head:
        return
    else:
        _check_known(current)
    log.info("upgrading the database schema from revision %s to %s", current or BASELINE_REVISION, head)
    command.upgrade(alembic_config(connection), "head")


def _create_at_head(connection: Connection, context: MigrationContext) -> None:
    # No per-table existence checks: we just saw there are none, and we hold the write lock.
    # Measured: the checks were half of create_all's time on a fresh SQLite file.
    Base.metadata.create_all(connection, checkfirst=False)
    # What `command.stamp(config, "head")` does, minus loading env.py and the revision files
    # again: this runs at every server start on a fresh database (hundreds per test run).
    context.stamp(_script_directory(), "head")


def _check_known(revision: str) -> None:
    """Fail with a message an operator can act on, not Alembic's "Can't locate revision"."""
    try:
        _script_directory().get_revision(revision)
    except CommandError as exc:
        raise RuntimeError(
            f"the database is at schema revision {revision!r}, which this Runforge does not know: "
            "it was written by a newer version. Run that version, or restore a backup."
        ) from exc


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
