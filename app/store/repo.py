"""Queries. Each public method is one short transaction of its own."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Update, and_, bindparam, delete, func, insert, or_, select, text, update
from sqlalchemy.engine import CursorResult
from sqlalchemy.exc import IntegrityError, OperationalError

from app.clock import utcnow
from app.control.run import ACTIVE_STATUSES
from app.errors import AppBusy, Conflict, NotFound, ServiceUnavailable
from app.store.db import Database
from app.store.models import App, ChatMessage, RunRow, User, Worker

if TYPE_CHECKING:
    from app.control.outcomes import Published
    from app.control.run import Run as LiveRun

ABANDONED_RUN_LAST_SEQ = 1_000_000_000
TOKEN_PREFIX = "rf_"

# Turns of history sent to the model with a new message.
HISTORY_TURNS = 20


def new_id(nbytes: int = 8) -> str:
    return secrets.token_hex(nbytes)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def storable_key(key: str) -> bool:
    """False for an id no row can have: one with a NUL, which PostgreSQL's text type refuses (the
    lookup would fail, not find nothing). Ids come from users and models; the answer is "none"."""
    return "\x00" not in key


class Users:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, name: str) -> tuple[User, str]:
        """Create a user; returns it with its token, which is shown once and never stored."""
        # A fixed prefix: a token never starts with "-" (which command lines take for an
        # option), and a leaked token is recognisable to secret scanners.
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        user = User(id=new_id(), name=name, token_hash=hash_token(token))
        async with self._db.session() as s:
            s.add(user)
        return user, token

    async def by_token(self, token: str) -> User | None:
        async with self._db.read() as s:
            result: User | None = await s.scalar(select(User).where(User.token_hash == hash_token(token)))
            return result

    async def by_name(self, name: str) -> User | None:
        async with self._db.read() as s:
            result: User | None = await s.scalar(select(User).where(User.name == name))
            return result

    async def count(self) -> int:
        async with self._db.read() as s:
            return int(await s.scalar(select(func.count(User.id))) or 0)


class Apps:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def create(self, owner_id: str, name: str, code_gen_type: str, init_prompt: str | None) -> App:
        app = App(id=new_id(), owner_id=owner_id, name=name, code_gen_type=code_gen_type, init_prompt=init_prompt)
        async with self._db.session() as s:
            s.add(app)
        return app

    async def get(self, app_id: str) -> App | None:
        if not storable_key(app_id):
            return None
        async with self._db.read() as s:
            return await s.get(App, app_id)

    async def list_for(self, owner_id: str) -> Sequence[App]:
        async with self._db.read() as s:
            query = select(App).where(App.owner_id == owner_id).order_by(App.created_at.desc(), App.id)
            return (await s.scalars(query)).all()

    async def delete(self, app_id: str) -> list[str]:
        """Delete the app with its history and runs; returns the ids of the runs deleted."""
        async with self._db.session() as s:
            await s.execute(delete(ChatMessage).where(ChatMessage.app_id == app_id))
            runs = await s.execute(delete(RunRow).where(RunRow.app_id == app_id).returning(RunRow.id))
            await s.execute(delete(App).where(App.id == app_id))
            return list(runs.scalars().all())

    async def messages(self, app_id: str) -> Sequence[ChatMessage]:
        async with self._db.read() as s:
            query = select(ChatMessage).where(ChatMessage.app_id == app_id).order_by(ChatMessage.id)
            return (await s.scalars(query)).all()

    async def history(self, app_id: str) -> list[tuple[str, str]]:
        """The last turns of chat history, oldest first, for the model."""
        async with self._db.read() as s:
            query = (
                select(ChatMessage.role, ChatMessage.content)
                .where(ChatMessage.app_id == app_id)
                .order_by(ChatMessage.id.desc())
                .limit(HISTORY_TURNS * 2)
            )
            rows = (await s.execute(query)).all()
        return [(role, content) for role, content in reversed(rows)]


class Runs:
    """Runs' rows; implements the run manager's RunStore.

    ``worker_id`` goes into every row this process inserts (``owner_worker``): where a stop from
    another worker is sent. ``exclusive_apps`` makes the insert itself check, under a lock every
    worker takes, that the app has no active run: with several workers, the run manager's
    in-memory rule "one active run per app" sees only its own runs.
    """

    def __init__(self, db: Database, worker_id: str | None = None, *, exclusive_apps: bool = False) -> None:
        self._db = db
        self.worker_id = worker_id
        self._exclusive_apps = exclusive_apps

    async def get(self, run_id: str) -> RunRow | None:
        if not storable_key(run_id):
            return None
        async with self._db.read() as s:
            return await s.get(RunRow, run_id)

    async def run_exists(self, run_id: str) -> bool:
        return await self.get(run_id) is not None

    async def insert_run(self, run: LiveRun) -> None:
        try:
            await self._insert_run(run)
        except IntegrityError:
            # Lost a race: the id was taken meanwhile, or the app was deleted meanwhile.
            if await self.run_exists(run.id):
                raise Conflict(f"run id {run.id!r} is already used", code="run_id_taken") from None
            raise NotFound(f"no app {run.app_id!r}", code="app_not_found") from None
        except OperationalError as exc:
            # Locked past the busy timeout, or unreachable: the run cannot start, and the client
            # should hear that it may try again, not "internal server error".
            raise ServiceUnavailable(
                "the database is busy or unavailable; try again", code="database_unavailable"
            ) from exc

    async def _insert_run(self, run: LiveRun) -> None:
        values = {
            "id": run.id,
            "kind": run.kind.value,
            "app_id": run.app_id,
            "user_id": run.user_id,
            "message": run.message,
            "status": "running",
            "created_at": run.created_at,
            "started_at": utcnow(),
            "owner_worker": self.worker_id,
        }
        async with self._db.write() as conn:
            if self._exclusive_apps and run.app_id is not None:
                # SQLite: BEGIN IMMEDIATE already holds the one write lock. PostgreSQL: a lock on
                # the app's id, held to the commit, so two workers cannot both see "no active run".
                if conn.dialect.name == "postgresql":
                    await conn.execute(_LOCK_APP, {"key": run.app_id})
                active = (await conn.execute(_ACTIVE_RUN_OF_APP, {"app_id": run.app_id})).first()
                if active is not None:
                    raise AppBusy(run.app_id, active.id, active.owner_worker, active.stop_requested_at is not None)
            await conn.execute(_INSERT_RUN, values)

    async def active_run_of_app(self, app_id: str) -> tuple[str, str | None, bool] | None:
        """(run id, owner worker, stop requested) of the app's active run, if any."""
        async with self._db.read() as s:
            row = (await s.execute(_ACTIVE_RUN_OF_APP, {"app_id": app_id})).first()
        return None if row is None else (row.id, row.owner_worker, row.stop_requested_at is not None)

    async def request_stop(self, run_id: str, reason: str, mode: str) -> bool:
        """Record a stop for a run another worker owns. False if it was asked for already or is over."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(RunRow)
                .where(RunRow.id == run_id, RunRow.status.in_(ACTIVE_STATUSES), RunRow.stop_requested_at.is_(None))
                .values(stop_requested_at=utcnow(), stop_reason=reason, stop_mode=mode)
            )
        return _rowcount(result) == 1

    async def owned_active_or_lost(self, worker_id: str) -> list[tuple[str, str, str | None, str | None, bool]]:
        """This worker's rows that are active, or that another worker declared lost.

        (id, status, stop_reason, stop_mode, stop requested) each: what reconciliation compares
        with the runs in memory.
        """
        query = select(RunRow.id, RunRow.status, RunRow.stop_reason, RunRow.stop_mode, RunRow.stop_requested_at).where(
            RunRow.owner_worker == worker_id,
            or_(RunRow.status.in_(ACTIVE_STATUSES), and_(RunRow.status == "failed", RunRow.error_code == WORKER_LOST)),
        )
        async with self._db.read() as s:
            rows = (await s.execute(query)).all()
        return [(r.id, r.status, r.stop_reason, r.stop_mode, r.stop_requested_at is not None) for r in rows]

    async def fail_if_active(self, run_ids: Sequence[str], code: str, message: str) -> list[str]:
        """Mark these runs failed if they are still active; returns the ids this call marked."""
        if not run_ids:
            return []
        async with self._db.write() as conn:
            result = await conn.execute(
                update(RunRow)
                .where(RunRow.id.in_(run_ids), RunRow.status.in_(ACTIVE_STATUSES))
                .values(_abandoned_values(code, message))
                .returning(RunRow.id)
            )
            return [row.id for row in result]

    async def record_completed(self, run: LiveRun) -> None:
        """The turn (user message + AI reply) and the run's end, in one transaction.

        A chat run has no app, hence no history: the client keeps its own conversation.
        Raises RunLost if the row is no longer active: another worker declared this one lost,
        and the run's clients were told it failed, so its turn must not be saved.
        """
        async with self._db.write() as conn:
            result = await conn.execute(*_final_update(run, "completed", last_seq=run.log.last_seq + 1))
            if _rowcount(result) != 1:
                raise RunLost(f"run {run.id} is no longer active in the database")
            if run.app_id is not None:
                turn = [
                    {"app_id": run.app_id, "run_id": run.id, "role": "user", "content": run.message},
                    {"app_id": run.app_id, "run_id": run.id, "role": "ai", "content": run.reply_text},
                ]
                await conn.execute(_INSERT_MESSAGES, turn)

    async def record_interrupted(self, run: LiveRun) -> None:
        async with self._db.write() as conn:
            await conn.execute(*_final_update(run, "interrupted"))

    async def record_failed(self, run: LiveRun) -> None:
        async with self._db.write() as conn:
            await conn.execute(*_final_update(run, "failed"))

    async def fail_abandoned(self) -> int:
        """Runs left queued/running by a crash can never finish: mark them failed.

        One process only: with several workers, the others' runs are alive (see Workers.lost_runs).
        """
        async with self._db.session() as s:
            result = await s.execute(
                update(RunRow)
                .where(RunRow.status.in_(ACTIVE_STATUSES))
                .values(_abandoned_values("server_restart", "the server stopped while the run was active"))
            )
            return int(getattr(result, "rowcount", 0) or 0)


class RunLost(RuntimeError):
    """A run's row was ended by someone else (declared lost) while the run went on."""


WORKER_LOST = "worker_lost"


def _abandoned_values(code: str, message: str) -> dict[str, Any]:
    return {
        "status": "failed",
        # The log died with its process: number the replayed `failed` event after anything a
        # client can have seen, so a rejoin with Last-Event-ID gets it.
        "last_seq": ABANDONED_RUN_LAST_SEQ,
        "error_code": code,
        "error_message": message,
        "ended_at": utcnow(),
    }


def _rowcount(result: CursorResult[Any]) -> int:
    return int(result.rowcount or 0)


class Workers:
    """Worker processes and their heartbeats, on the database's clock (several workers only)."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def register(self, worker_id: str, host: str, pid: int) -> None:
        """Add this worker, or take over its row (a worker id set by the operator, reused)."""
        async with self._db.write() as conn:
            now = await conn.scalar(select(self._db.clock()))
            values = {"host": host, "pid": pid, "started_at": now, "heartbeat_at": now, "stopped_at": None}
            taken_over = await conn.execute(update(Worker).where(Worker.id == worker_id).values(values))
            if _rowcount(taken_over) == 0:
                await conn.execute(insert(Worker).values(id=worker_id, **values))

    async def heartbeat(self, worker_id: str) -> bool:
        """False if the row is gone or marked stopped: this worker counts as lost."""
        async with self._db.write() as conn:
            result = await conn.execute(
                update(Worker)
                .where(Worker.id == worker_id, Worker.stopped_at.is_(None))
                .values(heartbeat_at=self._db.clock())
            )
        return _rowcount(result) == 1

    async def mark_stopped(self, worker_id: str) -> None:
        async with self._db.write() as conn:
            await conn.execute(update(Worker).where(Worker.id == worker_id).values(stopped_at=self._db.clock()))

    async def lost_runs(self, timeout_s: float) -> list[str]:
        """Active runs whose worker stopped, went silent for timeout_s, or is unknown."""
        owner = Worker.__table__.alias("owner")
        late = owner.c.heartbeat_at < self._db.clock() - timeout_s
        query = (
            select(RunRow.id)
            .select_from(RunRow.__table__.outerjoin(owner, owner.c.id == RunRow.owner_worker))
            .where(
                RunRow.status.in_(ACTIVE_STATUSES),
                or_(owner.c.id.is_(None), owner.c.stopped_at.is_not(None), late),
            )
        )
        async with self._db.read() as s:
            return list((await s.scalars(query)).all())

    async def forget_old(self, older_than_s: float) -> None:
        """Rows of workers silent for a long time are history: keep the table small."""
        async with self._db.write() as conn:
            await conn.execute(delete(Worker).where(Worker.heartbeat_at < self._db.clock() - older_than_s))


# Built once: a statement object built per call costs SQLAlchemy a cache-key walk over its
# values (measured ~0.2 ms per run); executed with parameters, the compiled form is reused.
_OUTCOME_FIELDS = (
    "status",
    "stop_requested_at",
    "ended_at",
    "stop_reason",
    "finish_reason",
    "error_code",
    "error_message",
    "steps",
    "tool_calls_executed",
    "tool_calls_skipped",
    "usage",
    "last_seq",
    "stop_mode",
    "rolled_back",
    "published",
)
# Only an active row: one that another worker declared lost keeps the outcome it was given.
_RECORD_OUTCOME = (
    update(RunRow)
    .where(RunRow.id == bindparam("run_id"), RunRow.status.in_(ACTIVE_STATUSES))
    .values({name: bindparam(f"new_{name}") for name in _OUTCOME_FIELDS})
)
_INSERT_RUN = insert(RunRow)
_INSERT_MESSAGES = insert(ChatMessage)
_ACTIVE_RUN_OF_APP = (
    select(RunRow.id, RunRow.owner_worker, RunRow.stop_requested_at)
    .where(RunRow.app_id == bindparam("app_id"), RunRow.status.in_(ACTIVE_STATUSES))
    .limit(1)
)
# A transaction-scoped PostgreSQL advisory lock keyed by the app id's hash.
_LOCK_APP = text("SELECT pg_advisory_xact_lock(hashtext(:key))")


def _published(published: Published | None) -> dict[str, Any]:
    if published is None:
        return {"files": [], "previewUrl": None, "checkpoint": None}
    return {"files": list(published.files), "previewUrl": published.preview_url, "checkpoint": published.checkpoint}


def _final_update(run: LiveRun, status: str, last_seq: int | None = None) -> tuple[Update, dict[str, Any]]:
    stats = run.stats
    outcome = {
        "status": status,
        "stop_requested_at": run.stop_requested_at,
        "ended_at": run.ended_at or utcnow(),
        "stop_reason": run.stop_reason.value if run.stop_reason else None,
        "finish_reason": run.finish_reason,
        "error_code": run.error.code if run.error else None,
        "error_message": run.error.message if run.error else None,
        "steps": stats.steps,
        "tool_calls_executed": stats.executed,
        "tool_calls_skipped": stats.skipped,
        "usage": stats.usage(),
        "last_seq": last_seq if last_seq is not None else run.log.last_seq,
        "stop_mode": run.stop_mode.value if run.stop_reason else None,
        "rolled_back": run.rolled_back,
        "published": _published(run.published) if status == "completed" else None,
    }
    return _RECORD_OUTCOME, {"run_id": run.id, **{f"new_{k}": v for k, v in outcome.items()}}
