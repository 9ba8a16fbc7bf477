"""Stops for runs that do not exist yet: remembered, so a stop that races its run's start wins.

A client that chooses its run id (`runId`, a /v1 request id) may send the stop before the start
has made the run: the two requests travel separately, and the start spends milliseconds in
validation and the database first. Such a stop is remembered here, per user and run id, for a
short window; a start with that id by that user takes it and ends `interrupted` (`user_stop`)
before any upstream request or side effect. Only the same user's start takes it: a stop can
never end another user's run.

Bounded in time (``window_s``), per user (``per_user``: the user's oldest goes first) and in
all (``total``: the oldest goes first), so memory stays bounded whatever clients send.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from app.control.cancel import StopMode

DEFAULT_WINDOW_S = 30.0
DEFAULT_PER_USER = 100
DEFAULT_TOTAL = 10_000


@dataclass(frozen=True, slots=True)
class PendingStopLimits:
    window_s: float = DEFAULT_WINDOW_S
    per_user: int = DEFAULT_PER_USER
    total: int = DEFAULT_TOTAL


class PendingStops:
    """(user id, run id) -> the stop's mode, until a start takes it or it expires."""

    def __init__(self, limits: PendingStopLimits | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits or PendingStopLimits()
        self._clock = clock
        self._stops: OrderedDict[tuple[str, str], tuple[float, StopMode]] = OrderedDict()  # oldest first
        self._per_user: dict[str, int] = {}

    def __len__(self) -> int:
        self._expire()
        return len(self._stops)

    def remember(self, user_id: str, run_id: str, mode: StopMode) -> None:
        key = (user_id, run_id)
        self._expire()
        if self._stops.pop(key, None) is None:
            self._per_user[user_id] = self._per_user.get(user_id, 0) + 1
        self._stops[key] = (self._clock() + self._limits.window_s, mode)
        if self._per_user[user_id] > self._limits.per_user:
            self._drop(next(k for k in self._stops if k[0] == user_id))
        if len(self._stops) > self._limits.total:
            self._drop(next(iter(self._stops)))

    def take(self, user_id: str, run_id: str) -> StopMode | None:
        """The mode of a live pending stop for this run, which is forgotten; None if there is none."""
        self._expire()
        entry = self._stops.get((user_id, run_id))
        if entry is None:
            return None
        self._drop((user_id, run_id))
        return entry[1]

    def forget(self, user_id: str, run_id: str) -> None:
        if (user_id, run_id) in self._stops:
            self._drop((user_id, run_id))

    def _expire(self) -> None:
        now = self._clock()
        while self._stops:
            key, (expires_at, _) = next(iter(self._stops.items()))
            if expires_at > now:
                return
            self._drop(key)

    def _drop(self, key: tuple[str, str]) -> None:
        del self._stops[key]
        left = self._per_user[key[0]] - 1
        if left:
            self._per_user[key[0]] = left
        else:
            del self._per_user[key[0]]
