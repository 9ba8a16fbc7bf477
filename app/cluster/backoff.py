"""Exponential backoff with jitter, for reconnecting to Redis."""

from __future__ import annotations

import random


class Backoff:
    """0.05 s, 0.1 s, 0.2 s, ... up to ``cap_s``, each scaled by a random 50-100 %.

    The jitter keeps several workers that lost Redis together from reconnecting in lockstep.
    """

    def __init__(self, first_s: float = 0.05, cap_s: float = 2.0) -> None:
        self._first = first_s
        self._cap = cap_s
        self._next = first_s

    def next(self) -> float:
        delay = self._next
        self._next = min(self._cap, self._next * 2)
        return delay * random.uniform(0.5, 1.0)

    def reset(self) -> None:
        self._next = self._first
