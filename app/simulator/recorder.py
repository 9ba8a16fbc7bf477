"""The simulator's request log, readable in-process or over HTTP (``GET /_sim/requests``)."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

# A run's prompt is the user's message plus a preset's instruction and the app's current files
# (up to 100,000 chars each): cutting it at the message limit would hide what a test checks.
RECORDED_PROMPT_CHARS = 400_000
_SHORT_PROMPT_CHARS = 2_000  # what an older record keeps (see Recorder)
DEFAULT_MAX_RECORDS = 10_000
DEFAULT_FULL_PROMPTS = 32


@dataclass
class RequestRecord:
    """One chat-completions request as the simulator saw it (times are ``time.monotonic()``)."""

    seq: int
    run_id: str | None
    scenario: str
    model: str
    stream: bool
    started_at: float
    tool_results_seen: int
    tool_names_offered: list[str]
    # The prompt as the model got it (cut to RECORDED_PROMPT_CHARS), for tests of what a run sends.
    last_user_message: str = ""
    # The request body's top-level fields (tests check what a proxy forwards).
    fields: list[str] = field(default_factory=list)
    # The client's source port: equal for two requests means one pooled connection.
    client_port: int | None = None
    # The bearer token the request carried (a proxy must send its own key, not its client's).
    api_key: str | None = None
    # When the client says it began sending (its wall clock, time.time()), if it said so.
    sent_at: float | None = None
    first_chunk_at: float | None = None
    chunks_sent: int = 0  # SSE events when streaming, response bodies otherwise
    disconnected_at: float | None = None
    finished_at: float | None = None
    status: int | None = None
    error: str | None = None  # set when the handler itself failed or was cancelled

    @property
    def is_open(self) -> bool:
        return self.finished_at is None and self.disconnected_at is None and self.error is None


class Recorder:
    """Thread-safe request log: the app writes from uvicorn's thread, tests read from theirs.

    Every change notifies a condition, so readers block in :meth:`wait_for` instead of polling.
    Sequence numbers are never reused, not even after :meth:`clear`, so a request still in
    flight across a ``clear()`` cannot update somebody else's record.

    Bounded, because the simulator is also `make run`'s model and serves for as long as the
    server does: at most ``max_records`` records (the oldest finished ones go first; a request
    still open is never forgotten, so ``open_requests`` stays true), and only the newest
    ``full_prompts`` keep their prompt up to 400,000 characters; older ones keep its first 2,000.
    """

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS, full_prompts: int = DEFAULT_FULL_PROMPTS) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[int, RequestRecord] = {}
        self._last_seq = 0
        self._max_records = max_records
        self._full_prompts = full_prompts
        self._with_full_prompt: collections.deque[int] = collections.deque()

    def records(self, run_id: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return self._snapshot(run_id)

    def wait_for(self, predicate: Callable[[list[RequestRecord]], bool], timeout: float) -> bool:
        with self._changed:
            return bool(self._changed.wait_for(lambda: predicate(self._snapshot(None)), timeout))

    def open_requests(self) -> int:
        with self._lock:
            return sum(1 for record in self._records.values() if record.is_open)

    def clear(self) -> None:
        with self._changed:
            self._records.clear()
            self._changed.notify_all()

    # The methods below are the app's write side.

    def add(self, record: RequestRecord) -> int:
        with self._changed:
            self._last_seq += 1
            self._records[self._last_seq] = dataclasses.replace(record, seq=self._last_seq)
            self._bound(self._last_seq)
            self._changed.notify_all()
            return self._last_seq

    def _bound(self, newest: int) -> None:
        self._with_full_prompt.append(newest)
        while len(self._with_full_prompt) > self._full_prompts:
            older = self._records.get(self._with_full_prompt.popleft())
            if older is not None:
                older.last_user_message = older.last_user_message[:_SHORT_PROMPT_CHARS]
        excess = len(self._records) - self._max_records
        if excess > 0:  # the oldest finished ones: usually the very oldest, so this stops at once
            finished = (seq for seq, record in self._records.items() if not record.is_open)
            for seq in list(itertools.islice(finished, excess)):
                del self._records[seq]

    def note_status(self, seq: int, status: int) -> None:
        self._update(seq, lambda r: setattr(r, "status", status))

    def note_chunks(self, seq: int, count: int, at: float) -> None:
        def apply(record: RequestRecord) -> None:
            record.chunks_sent += count
            if record.first_chunk_at is None:
                record.first_chunk_at = at

        self._update(seq, apply)

    def note_finished(self, seq: int, at: float) -> None:
        self._update(seq, lambda r: setattr(r, "finished_at", at) if r.is_open else None)

    def note_disconnected(self, seq: int, at: float) -> None:
        # A disconnect after the response completed is just the client closing its socket.
        self._update(seq, lambda r: setattr(r, "disconnected_at", at) if r.is_open else None)

    def note_failed(self, seq: int, error: str) -> None:
        self._update(seq, lambda r: setattr(r, "error", error) if r.is_open else None)

    def _update(self, seq: int, apply: Callable[[RequestRecord], None]) -> None:
        with self._changed:
            record = self._records.get(seq)
            if record is not None:
                apply(record)
                self._changed.notify_all()

    def _snapshot(self, run_id: str | None) -> list[RequestRecord]:
        return [
            dataclasses.replace(record, tool_names_offered=list(record.tool_names_offered), fields=list(record.fields))
            for record in self._records.values()
            if run_id is None or record.run_id == run_id
        ]
