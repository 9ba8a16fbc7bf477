"""The wall clock every layer reads (runs' timestamps, rows' defaults), in one place."""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)
