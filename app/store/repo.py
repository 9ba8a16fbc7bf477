"""Queries. Each public method is one short transaction of its own."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import Update, bindparam, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from app.errors import Conflict, NotFound
from app.store.db import Database
from app.store.models import App, ChatMessage, Run, User, utcnow

if TYPE_CHECKING:
    from app.control.run import Run as LiveRun

ABANDONED_RUN_LAST_SEQ = 1_000_000_000
TOKEN_PREFIX = "rf_"

# Turns of history sent to the model with a new message.
HISTORY_TURNS = 20


def new_id(nbytes: int = 8) -> str:
    return secrets.token_hex(nbytes)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


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
        async with self._db.read() as s:
            return await s.get(App, app_id)

    async def list_for(self, owner_id: str) -> Sequence[App]:
        async with self._db.read() as s:
            query = select(App).where(App.owner_id == owner_id).order_by(App.created_at.desc(), App.id)
            return (await s.scalars(query)).all()

    async def delete(self, app_id: str) -> None:
        async with self._db.session() as s:
            await s.execute(delete(ChatMessage).where(ChatMessage.app_id == app_id))
            await s.execute(delete(Run).where(Run.app_id == app_id))
            await s.execute(delete(App).where(App.id == app_id))

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
    """Run rows; implements the run manager's RunStore."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, run_id: str) -> Run | None:
        async with self._db.read() as s:
            return await s.get(Run, run_id)

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
        }
        async with self._db.write() as conn:
            await conn.execute(_INSERT_RUN, values)

    async def record_completed(self, run: LiveRun) -> None:
        """The turn (user message + AI reply) and the run's end, in one transaction.

        A chat run has no app, hence no history: the client keeps its own conversation.
        """
        async with self._db.write() as conn:
            if run.app_id is not None:
                turn = [
                    {"app_id": run.app_id, "run_id": run.id, "role": "user", "content": run.message},
                    {"app_id": run.app_id, "run_id": run.id, "role": "ai", "content": run.reply_text},
                ]
                await conn.execute(_INSERT_MESSAGES, turn)
            await conn.execute(*_final_update(run, "completed", last_seq=run.log.last_seq + 1))

    async def record_interrupted(self, run: LiveRun) -> None:
        async with self._db.write() as conn:
            await conn.execute(*_final_update(run, "interrupted"))

    async def record_failed(self, run: LiveRun) -> None:
        async with self._db.write() as conn:
            await conn.execute(*_final_update(run, "failed"))

    async def fail_abandoned(self) -> int:
        """Runs left queued/running by a crash can never finish: mark them failed."""
        async with self._db.session() as s:
            result = await s.execute(
                update(Run)
                .where(Run.status.in_(("queued", "running")))
                .values(
                    status="failed",
                    # The log died with the process: number the replayed `failed` event after
                    # anything a client can have seen, so a rejoin with Last-Event-ID gets it.
                    last_seq=ABANDONED_RUN_LAST_SEQ,
                    error_code="server_restart",
                    error_message="the server stopped while the run was active",
                    ended_at=utcnow(),
                )
            )
            return int(getattr(result, "rowcount", 0) or 0)


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
)
_RECORD_OUTCOME = (
    update(Run)
    .where(Run.id == bindparam("run_id"))
    .values({name: bindparam(f"new_{name}") for name in _OUTCOME_FIELDS})
)
_INSERT_RUN = insert(Run)
_INSERT_MESSAGES = insert(ChatMessage)


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
    }
    return _RECORD_OUTCOME, {"run_id": run.id, **{f"new_{k}": v for k, v in outcome.items()}}
