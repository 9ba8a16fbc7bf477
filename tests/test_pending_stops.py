"""The remembered stops of runs not started yet: per user, and bounded in time and in count."""

from __future__ import annotations

from app.control.cancel import StopMode
from app.control.pending_stops import PendingStopLimits, PendingStops


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def stops(window_s: float = 30.0, per_user: int = 100, total: int = 10_000) -> tuple[PendingStops, Clock]:
    clock = Clock()
    return PendingStops(PendingStopLimits(window_s, per_user, total), clock), clock


def test_a_start_takes_its_users_stop_once() -> None:
    pending, _ = stops()
    pending.remember("alice", "r1", StopMode.ROLLBACK)
    assert pending.take("bob", "r1") is None  # another user's start is never stopped by it
    assert pending.take("alice", "r1") is StopMode.ROLLBACK
    assert pending.take("alice", "r1") is None
    assert len(pending) == 0


def test_a_stop_is_forgotten_after_the_window() -> None:
    pending, clock = stops(window_s=30.0)
    pending.remember("alice", "r1", StopMode.IMMEDIATE)
    clock.now += 29.9
    pending.remember("alice", "r2", StopMode.IMMEDIATE)
    clock.now += 0.2
    assert pending.take("alice", "r1") is None
    assert pending.take("alice", "r2") is StopMode.IMMEDIATE


def test_a_repeated_stop_keeps_one_entry_with_the_latest_mode_and_a_new_window() -> None:
    pending, clock = stops(window_s=10.0)
    pending.remember("alice", "r1", StopMode.IMMEDIATE)
    clock.now += 8
    pending.remember("alice", "r1", StopMode.AFTER_STEP)
    clock.now += 8
    assert len(pending) == 1
    assert pending.take("alice", "r1") is StopMode.AFTER_STEP


def test_one_user_cannot_push_out_another_users_stops() -> None:
    pending, _ = stops(per_user=3, total=10)
    pending.remember("bob", "b1", StopMode.IMMEDIATE)
    for index in range(50):
        pending.remember("mallory", f"m{index}", StopMode.IMMEDIATE)
    assert len(pending) == 4  # mallory's three newest, and bob's
    assert pending.take("bob", "b1") is StopMode.IMMEDIATE
    assert [pending.take("mallory", f"m{i}") for i in (46, 47, 48, 49)] == [None, *[StopMode.IMMEDIATE] * 3]


def test_all_users_together_are_bounded_oldest_first() -> None:
    pending, _ = stops(per_user=5, total=4)
    for user in ("u1", "u2", "u3", "u4", "u5", "u6"):
        pending.remember(user, "r", StopMode.IMMEDIATE)
    assert len(pending) == 4
    assert pending.take("u1", "r") is None
    assert pending.take("u2", "r") is None
    assert pending.take("u6", "r") is StopMode.IMMEDIATE


def test_forget_drops_only_that_stop() -> None:
    pending, _ = stops()
    pending.remember("alice", "r1", StopMode.IMMEDIATE)
    pending.remember("alice", "r2", StopMode.IMMEDIATE)
    pending.forget("alice", "r1")
    pending.forget("alice", "never")
    assert pending.take("alice", "r1") is None
    assert pending.take("alice", "r2") is StopMode.IMMEDIATE
