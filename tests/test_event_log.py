"""A live run's log is bounded in bytes: it lets go of what every follower has read, and of what
a follower lagging twice the cap behind has not; a late joiner starts at the oldest event held."""

from __future__ import annotations

import contextlib

from app.control.event_log import EventLog
from app.control.events import Done, LoggedEvent, TextDelta
from app.wire.sse import encode_event

CAP = 10_000


def frames(count: int) -> list[TextDelta]:
    return [TextDelta(f"token {index:05d} ") for index in range(count)]


async def read_all(log: EventLog, after_seq: int = 0) -> list[LoggedEvent]:
    seen: list[LoggedEvent] = []
    async with contextlib.aclosing(log.follow(after_seq)) as batches:
        async for batch in batches:
            seen.extend(batch)
    return seen


async def test_a_log_past_its_cap_lets_go_of_the_oldest_events_and_stays_bounded() -> None:
    log = EventLog("r1", encode_event, max_bytes=CAP)
    for event in frames(2000):
        log.append(event)
    assert log.size_bytes <= CAP
    assert log.first_held_seq > 1
    assert log.last_seq == 2000
    log.append(Done("stop", 1, 0))
    late = await read_all(log)  # a joiner from the start begins at the oldest event held
    assert [e.seq for e in late] == list(range(log.first_held_seq, 2002))


async def test_a_follower_that_keeps_up_sees_every_event() -> None:
    log = EventLog("r1", encode_event, max_bytes=CAP)
    seen: list[LoggedEvent] = []
    follower = log.follow()
    for event in frames(2000):
        log.append(event)
        seen.extend(await anext(follower))  # reads each event as it comes
    await follower.aclose()
    assert [e.seq for e in seen] == list(range(1, 2001))
    assert log.size_bytes <= CAP


async def test_a_lagging_follower_holds_its_events_up_to_twice_the_cap_then_jumps() -> None:
    log = EventLog("r1", encode_event, max_bytes=CAP)
    follower = log.follow()
    log.append(TextDelta("first "))
    assert [e.seq for e in await anext(follower)] == [1]  # then it stops reading
    sizes = []
    for event in frames(3000):
        log.append(event)
        sizes.append(log.size_bytes)
    assert max(sizes) <= 2 * CAP + 200  # never more than twice the cap (plus the event that crossed it)
    assert log.first_held_seq > 2  # its unread events went too
    rest = await anext(follower)
    assert rest[0].seq == log.first_held_seq  # it jumps to the oldest held
    await follower.aclose()
