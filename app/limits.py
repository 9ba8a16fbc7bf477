"""Per-user rate limits on starting runs and on stopping them (token buckets, in memory).

A bucket holds up to ``per_minute`` requests and refills at ``per_minute / 60`` a second: a user
may send a burst of a minute's worth at once, then one every ``60 / per_minute`` seconds. An
empty bucket answers 429 with ``Retry-After``, the seconds until the next request would pass.
``per_minute = 0`` switches a limit off. The buckets are this process's: with several workers a
user's requests are spread over them, so each worker allows its own minute's worth.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from app.errors import TooManyRequests
from app.settings import LimitSettings

# Users whose buckets are kept; past this, full buckets (idle users) are dropped first.
MAX_TRACKED_USERS = 10_000


@dataclass(slots=True)
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_minute: int, what: str) -> None:
        self._capacity = float(per_minute)
        self._refill_per_s = per_minute / 60.0
        self._what = what
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> None:
        """Count one request of ``key``; raises TooManyRequests when its bucket is empty."""
        if self._capacity <= 0:
            return
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room()
            bucket = self._buckets[key] = _Bucket(self._capacity, now)
        else:
            bucket.tokens = min(self._capacity, bucket.tokens + (now - bucket.updated) * self._refill_per_s)
            bucket.updated = now
        if bucket.tokens < 1.0:
            retry_after = (1.0 - bucket.tokens) / self._refill_per_s
            wait = math.ceil(retry_after)
            raise TooManyRequests(
                f"too many {self._what}: at most {self._capacity:.0f} a minute; try again in {wait} s",
                retry_after_s=retry_after,
            )
        bucket.tokens -= 1.0

    def _make_room(self) -> None:
        if len(self._buckets) < MAX_TRACKED_USERS:
            return
        now = time.monotonic()
        full_after_s = self._capacity / self._refill_per_s
        idle = [key for key, bucket in self._buckets.items() if now - bucket.updated >= full_after_s]
        for key in idle or list(self._buckets)[: MAX_TRACKED_USERS // 10]:
            del self._buckets[key]


class UserLimits:
    """The rate limits every way of starting or stopping a run goes through."""

    def __init__(self, settings: LimitSettings) -> None:
        self.settings = settings
        self._gen = RateLimiter(settings.gen_per_minute, "runs started")
        self._stops = RateLimiter(settings.stops_per_minute, "stop requests")

    def take_start(self, user_id: str) -> None:
        self._gen.take(user_id)

    def take_stop(self, user_id: str) -> None:
        self._stops.take(user_id)
