"""`runforge db upgrade` and `runforge db current`: the schema of the database `runforge serve` would use."""

from __future__ import annotations

import sys

from app.settings import Settings
from app.store.db import Database

__all__ = ["db_command"]


async def db_command(settings: Settings, command: str) -> int:
    """`runforge db upgrade` and `runforge db current`, on the database `runforge serve` would use."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import DBAPIError

    from app.store.schema import SchemaError

    url = settings.resolved_database_url
    shown = make_url(url).render_as_string(hide_password=True)
    print(f"database: {shown}")
    db = Database(url)
    try:
        return await (_db_upgrade(db) if command == "upgrade" else _db_current(db))
    except SchemaError as exc:
        print(f"runforge: {exc}", file=sys.stderr)
        return 1
    except (OSError, DBAPIError) as exc:
        reason = exc.orig if isinstance(exc, DBAPIError) else exc
        print(f"runforge: cannot use the database {shown}: {reason.__class__.__name__}: {reason}", file=sys.stderr)
        return 1
    finally:
        await db.dispose()


async def _db_upgrade(db: Database) -> int:
    from app.store.schema import BASELINE_REVISION

    change = await db.create_schema(upgrade=True)
    if change.action == "created":
        print(f"created the schema at revision {change.after} (head)")
    elif change.action == "unchanged":
        print(f"already at revision {change.after} (head): nothing to do")
    else:
        before = f"{BASELINE_REVISION} (a database made before schema migrations)" if change.legacy else change.before
        print(f"upgraded the schema from revision {before} to {change.after} (head)")
    return 0


async def _db_current(db: Database) -> int:
    from app.store.schema import BASELINE_REVISION

    state = await db.schema_state()
    current = {
        "empty": "none (no schema yet: `runforge db upgrade` or `runforge serve` creates it)",
        "legacy": f"none (made before schema migrations: {BASELINE_REVISION} in effect; run `runforge db upgrade`)",
        "unknown": f"{state.current} (unknown to this version: written by a newer Runforge)",
        "behind": f"{state.current} (behind: run `runforge db upgrade`)",
        "current": f"{state.current} (head)",
    }[state.status]
    print(f"current: {current}")
    print(f"head: {state.head}")
    return 0 if state.status == "current" else 1
