"""Alembic migrations for the Runforge database.

The server upgrades its database itself at start (``app.store.schema.upgrade``): nobody runs
``alembic`` to deploy. The ``alembic`` command (configured in pyproject.toml's ``[tool.alembic]``)
is for writing the next revision, against a database already at head::

    RUNFORGE_DATABASE_URL=sqlite+aiosqlite:///path/to/runforge.db \\
        .venv/bin/alembic revision --autogenerate --rev-id 0003 -m "what changed"

Revision ids are sequential (0001, 0002, ...). On SQLite any ALTER beyond ADD COLUMN goes
through ``op.batch_alter_table`` (a table rebuild); see 0002 for what to watch there.
"""
