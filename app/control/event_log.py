"""A run's event log: numbered, pre-encoded events, closed by the terminal event, bounded in bytes.

Any number of followers read it, each from any seq (the original stream, a rejoin, a second tab).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import Protocol

from app.control.events import LoggedEvent, RunEvent


class EventEncoder(Protocol):
    """Encodes an event once, as it is logged, into what every follower sends (app/wire/sse.py)."""

    def __call__(self, run_id: str, seq: int, event: RunEvent, /) -> LoggedEvent: ...


# What a live run keeps of its events in memory (RetentionLimits.max_live_run_bytes sets it).
DEFAULT_LOG_MAX_BYTES = 64 * 1024 * 1024
# What an event costs besides its frames' bytes: the tuple, the bytes objects' headers, the list
# slot. Measured with tracemalloc: 263 bytes an event for a 110-byte text frame. Counted, so that
# the caps are on the memory a log really takes, not on a third of it.
EVENT_OVERHEAD_BYTES = 150
# A follower far behind gets its backlog in batches of at most this many events: a batch is a list
# (8 bytes an event), and a stalled reader of a 250k-event run held a 2 MB copy of the list.
FOLLOW_BATCH_EVENTS = 1024


def _cost(event: LoggedEvent) -> int:
    return len(event.wire) + len(event.relay) + EVENT_OVERHEAD_BYTES


class EventLog:
    """Append-only, closed by its terminal event; any number of followers, each from any seq.

    Bounded in bytes: past ``max_bytes`` the oldest events that no follower still has to read
    are let go (down to half the cap), so a run as long as 2M tokens does not hold a gigabyte;
    past twice the cap, those of a follower that lags that far behind too.
    A follower that joins (or asks to start) before the oldest event held starts from there: the
    seq ids of its stream jump, as they do for a finished run replayed from its row.
    """

    def __init__(self, run_id: str, encode: EventEncoder, max_bytes: int = DEFAULT_LOG_MAX_BYTES) -> None:
        self._run_id = run_id
        self._encode = encode
        self._events: list[LoggedEvent] = []
        self._base = 0  # events let go from the front: the first one held has seq _base + 1
        self._bytes = 0  # what the events held cost in memory (frames and EVENT_OVERHEAD_BYTES each)
        self._max_bytes = max_bytes
        self._positions: dict[object, int] = {}  # follower -> the seq it has read up to
        self._closed = False
        self._wakeup = asyncio.Event()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def last_seq(self) -> int:
        return self._base + len(self._events)

    @property
    def first_held_seq(self) -> int:
        return self._base + 1

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def limit_bytes(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes

    def append(self, event: RunEvent) -> bool:
        """Append an event; returns False (and drops it) once the log is closed."""
        if self._closed:
            return False
        logged = self._encode(self._run_id, self.last_seq + 1, event)
        self._events.append(logged)
        self._bytes += _cost(logged)
        self._closed = event.terminal
        if self._bytes > self._max_bytes:
            self._let_go()
        # Wake every follower, and give later waiters a fresh event.
        self._wakeup.set()
        self._wakeup = asyncio.Event()
        return True

    def since(self, seq: int) -> list[LoggedEvent]:
        """The events after ``seq`` still held, as they are now (for readers that poll:
        app/cluster/streams.py)."""
        return self._events[max(seq - self._base, 0) :]

    def drop_relay(self) -> None:
        """Forget the upstream frames kept for a /v1 client once it has them all.

        A finished chat run stays in memory for joins, which only need the SSE frames; its
        relay bytes would double its size (measured: ~1 MB for a 2,000-token answer).
        """
        self._events = [event._replace(relay=b"") if event.relay else event for event in self._events]
        self._bytes = sum(_cost(event) for event in self._events)

    async def follow(self, after_seq: int = 0) -> AsyncGenerator[list[LoggedEvent], None]:
        """Yield batches of events with seq > after_seq, live, until the terminal one.

        A batch is everything appended since the follower last woke (up to FOLLOW_BATCH_EVENTS):
        one write for a subscriber that fell behind, instead of one per event.
        """
        me = object()
        index = max(after_seq, self._base)
        try:
            while True:
                index = max(index, self._base)  # let go of while it lagged twice the cap behind
                self._positions[me] = index
                if index < self.last_seq:
                    start = index - self._base
                    batch = self._events[start : start + FOLLOW_BATCH_EVENTS]
                    index += len(batch)
                    yield batch
                elif self._closed:
                    return
                else:
                    await self._wakeup.wait()
        finally:
            del self._positions[me]

    def _let_go(self) -> None:
        """The oldest events, down to half the cap, but none a follower has still to read, unless
        that follower lags twice the cap behind (it then jumps ahead: memory stays bounded)."""
        lagging = self._bytes > 2 * self._max_bytes
        keep_from = self.last_seq if lagging else min(self._positions.values(), default=self.last_seq)
        dropped, freed = 0, 0
        while self._base + dropped < keep_from and self._bytes - freed > self._max_bytes // 2:
            freed += _cost(self._events[dropped])
            dropped += 1
        if dropped:
            del self._events[:dropped]
            self._base += dropped
            self._bytes -= freed
