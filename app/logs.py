"""Logging of a Runforge process: the CLI's, and each worker process's of `serve --workers N`.

Every record says which run, app and user it is about when it is about one: a run's task binds
its ids once (:func:`bind`), and every line logged from it, or from a task it starts, carries
them, with no ``extra=`` at each call. ``RUNFORGE_LOG_FORMAT=json`` writes one JSON object a line
(``ts``, ``level``, ``logger``, ``message``, ``runId``, ``appId``, ``userId``, ``exc``) for log
pipelines; the default text format appends ``run=… app=… user=…``.
"""

from __future__ import annotations

import atexit
import copy
import json
import logging
import re
import sys
from contextvars import ContextVar
from datetime import UTC, datetime
from logging.handlers import QueueHandler, QueueListener
from queue import SimpleQueue
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
LOG_FORMATS = ("text", "json")
# Record attribute -> JSON key. ``extra={"run_id": ...}`` at a call wins over the bound value.
CONTEXT_FIELDS = {"run_id": "runId", "app_id": "appId", "user_id": "userId"}
_TEXT_NAMES = {"run_id": "run", "app_id": "app", "user_id": "user"}

_context: ContextVar[dict[str, str] | None] = ContextVar("runforge_log_context", default=None)


def bind(**fields: str | None) -> None:
    """Add these ids to every record logged from the current task from now on (and from the
    tasks it starts). Task-local: asyncio copies the context into each new task."""
    merged = dict(_context.get() or {})
    merged.update({name: value for name, value in fields.items() if value})
    _context.set(merged)


def configure_logging(log_format: str = "text") -> None:
    """Root logging for this process: records are queued by the caller (its ids attached there)
    and written to stderr by a thread of their own, so a slow terminal or pipe never blocks the
    event loop."""
    global _listener
    _stop_listener()
    output = _CurrentStderr()
    output.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter(LOG_FORMAT))
    queued: SimpleQueue[logging.LogRecord] = SimpleQueue()
    enqueue = _Enqueue(queued)
    enqueue.addFilter(ContextFilter())  # in the logging task: its context is there, not in the thread
    _listener = QueueListener(queued, output)
    _listener.start()
    logging.basicConfig(level=logging.INFO, handlers=[enqueue], force=True)
    # HTTP clients log every request at INFO: one line per upstream call, and noise in `run`.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecrets) for f in access.filters):
        access.addFilter(RedactSecrets())


_listener: QueueListener | None = None


@atexit.register
def _stop_listener() -> None:
    """Write what is still queued, then end the writing thread (at exit, or before a new one)."""
    global _listener
    if _listener is not None:
        _listener.stop()
        _listener = None


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to ``sys.stderr`` as it is at each record, not as it was at setup: whatever swaps
    it later (pytest's capture between tests, an embedding host) gets the lines, and a stream
    closed since then is never written to."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass  # set by StreamHandler.__init__ and setStream: the current sys.stderr always wins


class _Enqueue(QueueHandler):
    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """The record as the writing thread needs it: message and traceback rendered here (the
        arguments may change after the call), the ids kept as attributes for the formatter."""
        prepared = copy.copy(record)
        prepared.msg, prepared.args = record.getMessage(), None
        if record.exc_info:
            prepared.exc_text = self.formatter_for_exc.formatException(record.exc_info)
        prepared.exc_info = None
        return prepared

    formatter_for_exc = logging.Formatter()


class ContextFilter(logging.Filter):
    """Puts the bound ids on each record (None where there are none)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get() or {}
        for name in CONTEXT_FIELDS:
            if getattr(record, name, None) is None:
                setattr(record, name, bound.get(name))
        return True


class TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ids = " ".join(
            f"{_TEXT_NAMES[name]}={value}" for name in CONTEXT_FIELDS if (value := getattr(record, name, None))
        )
        if not ids:
            return line
        first, newline, rest = line.partition("\n")  # keep a traceback below the ids
        return f"{first} {ids}{newline}{rest}"


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name, key in CONTEXT_FIELDS.items():
            value = getattr(record, name, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:  # rendered before it was queued
            entry["exc"] = record.exc_text
        return json.dumps(entry, ensure_ascii=False, default=str)


class RedactSecrets(logging.Filter):
    """Keep login tokens, prompts and preview-link keys out of the access log (`/?token=…`,
    `gen/code?message=…`, `/preview/<appId>/<key>/…`: the key is a capability)."""

    _pattern = re.compile(r"([?&](?:token|message)=)[^&\s]*")
    _preview_key = re.compile(r"^(/preview/[^/?\s]+/)[^/?\s]+")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._redact(a) if isinstance(a, str) else a for a in record.args)
        return True

    def _redact(self, text: str) -> str:
        return self._preview_key.sub(r"\1[redacted]", self._pattern.sub(r"\1[redacted]", text))
