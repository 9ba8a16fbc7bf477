"""Finished runs kept in memory, so late joiners replay their events: bounded in time and in bytes.

A run's events are its log's encoded frames (``EventLog.size_bytes``). A finished run is kept for
``ttl_s``, unless it alone is over ``max_run_bytes`` or its log let events go while it ran (then
it is not kept at all), and all kept
runs together stay under ``max_total_bytes`` (the oldest go first). A run no longer kept is
answered from its row like any run of an earlier process: a rejoin replays its terminal event
(app/api/sse.py, ``final_event_stream``), a stop gets its final status.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.control.run import Run

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class RetentionLimits:
    ttl_s: float = 600.0
    max_run_bytes: int = 16 * MIB
    max_total_bytes: int = 256 * MIB
    max_live_run_bytes: int = 64 * MIB  # what a live run holds of its events (EventLog)


class RetainedRuns:
    def __init__(self, limits: RetentionLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits or RetentionLimits()
        self._clock = clock
        self._runs: OrderedDict[str, tuple[float, int, Run]] = OrderedDict()  # id -> (kept at, bytes, run)
        self._bytes = 0

    def __len__(self) -> int:
        self.prune()
        return len(self._runs)

    def __contains__(self, run_id: str) -> bool:
        return run_id in self._runs

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def get(self, run_id: str) -> Run | None:
        self.prune()
        entry = self._runs.get(run_id)
        return entry[2] if entry else None

    def keep(self, run: Run) -> None:
        size = run.log.size_bytes
        if size > self._limits.max_run_bytes or run.log.first_held_seq > 1:
            return  # too big, or already cut while live: its row answers for it
        self.discard(run.id)
        self._runs[run.id] = (self._clock(), size, run)
        self._bytes += size
        self.prune()

    def discard(self, run_id: str, run: Run | None = None) -> None:
        """Forget ``run_id`` (only if it is ``run``, when given: the id may be another run's)."""
        entry = self._runs.get(run_id)
        if entry is not None and (run is None or entry[2] is run):
            self._drop(run_id)

    def discard_app(self, app_id: str) -> None:
        for run_id in [run_id for run_id, (_, _, run) in self._runs.items() if run.app_id == app_id]:
            self._drop(run_id)

    def prune(self) -> None:
        horizon = self._clock() - self._limits.ttl_s
        while self._runs:
            run_id, (kept_at, _, _) = next(iter(self._runs.items()))
            if kept_at > horizon and self._bytes <= self._limits.max_total_bytes:
                return
            self._drop(run_id)

    def _drop(self, run_id: str) -> None:
        _, size, _ = self._runs.pop(run_id)
        self._bytes -= size
