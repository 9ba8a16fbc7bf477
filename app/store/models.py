"""Tables. Chat messages hold completed turns only; runs hold every attempt and how it ended."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, DateTime, Float, ForeignKey, Index, Integer, String, Text, false
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from app.clock import utcnow


class UTCDateTime(TypeDecorator[datetime]):
    """Stores UTC, returns aware datetimes (SQLite has no time zones)."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class NulFreeText(TypeDecorator[str]):
    """Free text (prompts, answers, error messages) without NUL characters, which PostgreSQL's
    text type refuses: a model's answer or a provider's error with one must still be saved."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else value.replace("\x00", "")


class Base(DeclarativeBase):
    type_annotation_map: dict[Any, Any] = {datetime: UTCDateTime}  # noqa: RUF012 - SQLAlchemy's API


class User(Base):
    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # sha256 of a 256-bit random token: tokens are never stored.
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class App(Base):
    __tablename__ = "apps"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    code_gen_type: Mapped[str] = mapped_column(String(32))
    init_prompt: Mapped[str | None] = mapped_column(NulFreeText)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class ChatMessage(Base):
    __tablename__ = "chat_messages"
    __table_args__ = (Index("ix_chat_messages_app_id_id", "app_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    app_id: Mapped[str] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"))
    run_id: Mapped[str] = mapped_column(String(64))
    role: Mapped[str] = mapped_column(String(16))  # "user" | "ai"
    content: Mapped[str] = mapped_column(NulFreeText)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class RunRow(Base):
    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_status", "status"), Index("ix_runs_owner_worker", "owner_worker"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    # code: an agent turn on an app; chat: one /v1/chat/completions request (no app).
    kind: Mapped[str] = mapped_column(String(8), default="code", server_default="code")
    app_id: Mapped[str | None] = mapped_column(ForeignKey("apps.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    message: Mapped[str] = mapped_column(NulFreeText)
    # queued | running | completed | interrupted | failed
    status: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None]
    stop_requested_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    finish_reason: Mapped[str | None] = mapped_column(String(32))
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(NulFreeText)
    steps: Mapped[int] = mapped_column(default=0)
    tool_calls_executed: Mapped[int] = mapped_column(default=0)
    tool_calls_skipped: Mapped[int] = mapped_column(default=0)
    usage: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    # Sequence number of the terminal event, so a late joiner can be told "nothing newer".
    last_seq: Mapped[int] = mapped_column(default=0)
    # The worker process running it (workers.id): where a stop for it is sent (app/cluster).
    owner_worker: Mapped[str | None] = mapped_column(String(64))
    # The mode of the stop asked for (immediate | rollback | after_step), and whether the
    # workspace was then restored: set with stop_requested_at by a stop from another worker.
    stop_mode: Mapped[str | None] = mapped_column(String(16))
    rolled_back: Mapped[bool] = mapped_column(default=False, server_default=false())
    # A completed run's files, preview URL and checkpoint, as its `done` event carried them:
    # a rejoin after a restart answers that event as it was sent.
    published: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class Worker(Base):
    """A server process of a multi-worker deployment, and its heartbeat (app/cluster/liveness.py).

    Times are seconds since the epoch on the database's clock, so hosts whose clocks disagree
    still agree on who is late.
    """

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int]
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    # Set on a clean shutdown: its runs that are still active are lost at once.
    stopped_at: Mapped[float | None] = mapped_column(Float)
