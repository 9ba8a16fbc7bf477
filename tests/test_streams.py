"""Run event streams in Redis (app/cluster/streams.py), in process, against the real Redis.

Each test gets its own key prefix, and its keys are deleted afterwards. They need Redis, and
skip (or fail, under RUNFORGE_REQUIRE_SERVICES=1) without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pytest
from redis.asyncio import Redis

from app.cluster import streams as streams_module
from app.cluster.streams import STREAM_ENDED, STREAM_GONE, UNFINISHED_TTL_S, RunStreams, StreamPublisher
from app.control.cancel import StopReason
from app.control.events import (
    Failed,
    Interrupted,
    LoggedEvent,
    RunEvent,
    RunStarted,
    TextDelta,
    UpstreamOpened,
)
from app.control.request import RunRequest
from app.control.run import Run
from app.store.repo import ABANDONED_RUN_LAST_SEQ
from app.wire.sse import encode_event
from tests.support import HANG_TIMEOUT_S

FINISHED_TTL_S = 30
# Long enough that a loaded machine cannot see the unfinished TTL tick below it during a test.
TTL_SLACK_S = 60


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, protocol=2)  # as app/cluster/node.py connects
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
async def streams(redis: Redis) -> AsyncIterator[RunStreams]:
    prefix = f"rftest{uuid.uuid4().hex[:10]}"
    try:
        yield RunStreams(redis, prefix, FINISHED_TTL_S)
    finally:
        keys = [key async for key in redis.scan_iter(match=f"{prefix}:*", count=500)]
        if keys:
            await redis.delete(*keys)


def logged(run_id: str, first_seq: int, *events: RunEvent) -> list[LoggedEvent]:
    return [encode_event(run_id, first_seq + i, event) for i, event in enumerate(events)]


def texts(run_id: str, first_seq: int, count: int) -> list[LoggedEvent]:
    return logged(run_id, first_seq, *(TextDelta(f"t{first_seq + i} ") for i in range(count)))


async def entries(redis: Redis, key: str) -> list[tuple[bytes, dict[bytes, bytes]]]:
    reply: Any = await redis.xrange(key)  # RESP2: [(entry id, {field: value}), ...]
    return list(reply)


async def entry_ids(redis: Redis, key: str) -> list[bytes]:
    return [entry_id for entry_id, _ in await entries(redis, key)]


def ids(*seqs: int) -> list[bytes]:
    return [f"0-{seq}".encode() for seq in seqs]


def wire(events: Sequence[LoggedEvent]) -> bytes:
    return b"".join(event.wire for event in events)


async def never_ended(_last_seq: int) -> bytes | None:
    return None


async def follow_all(
    streams: RunStreams, run_id: str, after_seq: int, run_ended: Callable[[int], Awaitable[bytes | None]] = never_ended
) -> list[bytes]:
    """Every batch `follow` yields, until it ends by itself."""
    batches: list[bytes] = []
    async with asyncio.timeout(HANG_TIMEOUT_S), contextlib.aclosing(streams.follow(run_id, after_seq, run_ended)) as it:
        async for batch in it:
            batches.append(batch)
    return batches


# -- append -----------------------------------------------------------------------------------


async def test_events_sent_twice_are_added_once_under_ids_0_seq(streams: RunStreams, redis: Redis) -> None:
    first = logged("r1", 1, RunStarted("app-1"), TextDelta("a"), TextDelta("b"))
    assert await streams.append([("r1", first)]) == [3]
    assert await streams.append([("r1", first)]) == [0]
    # A retry that overlaps what the stream has adds only what is new.
    overlapping = first[1:] + texts("r1", 4, 2)
    assert await streams.append([("r1", overlapping)]) == [2]

    stored = await entries(redis, streams.key("r1"))
    assert [entry_id for entry_id, _ in stored] == ids(1, 2, 3, 4, 5)
    everything = first + overlapping[2:]
    assert [(fields[b"k"], fields[b"w"]) for _, fields in stored] == [(e.kind.encode(), e.wire) for e in everything]
    assert all(b"t" not in fields for _, fields in stored)


async def test_nothing_is_added_after_a_terminal_entry_which_sets_the_finished_ttl(
    streams: RunStreams, redis: Redis
) -> None:
    key = streams.key("r1")
    assert await streams.append([("r1", logged("r1", 1, RunStarted(None), TextDelta("a")))]) == [2]
    # An unfinished stream expires too, but only after the long TTL.
    assert UNFINISHED_TTL_S - TTL_SLACK_S < await redis.ttl(key) <= UNFINISHED_TTL_S
    assert UNFINISHED_TTL_S > FINISHED_TTL_S + TTL_SLACK_S

    # In one batch, the events after a terminal one are not added.
    batch = logged("r1", 3, TextDelta("b"), Interrupted(StopReason.USER_STOP), TextDelta("late"))
    assert await streams.append([("r1", batch)]) == [2]
    assert 0 < await redis.ttl(key) <= FINISHED_TTL_S
    stored = await entries(redis, key)
    assert [entry_id for entry_id, _ in stored] == ids(1, 2, 3, 4)
    assert stored[-1][1] == {b"k": b"interrupted", b"w": batch[1].wire, b"t": b"1"}

    # In a later call, nothing at all: a late owner cannot add events after another worker's end.
    assert await streams.append([("r1", texts("r1", 5, 2))]) == [STREAM_ENDED]
    assert await streams.append([("r1", logged("r1", 1_000, Failed("worker_lost", "gone")))]) == [STREAM_ENDED]
    assert await entry_ids(redis, key) == ids(1, 2, 3, 4)
    assert 0 < await redis.ttl(key) <= FINISHED_TTL_S


async def test_a_missing_stream_takes_only_a_log_from_seq_1(streams: RunStreams, redis: Redis) -> None:
    # Redis lost the stream (a restart) and the publisher sent what came after its last batch.
    assert await streams.append([("r1", texts("r1", 4, 3))]) == [STREAM_GONE]
    assert not await redis.exists(streams.key("r1"))
    assert not await streams.exists("r1")
    # A terminal alone (another worker ending a lost run's stream) is refused the same way.
    abandoned = logged("r1", ABANDONED_RUN_LAST_SEQ, Failed("worker_lost", "gone"))
    assert await streams.append([("r1", abandoned)]) == [STREAM_GONE]
    assert not await streams.exists("r1")
    # The whole log again: taken.
    whole = logged("r1", 1, RunStarted(None), *(TextDelta(f"t{i}") for i in range(2, 7)))
    assert await streams.append([("r1", whole)]) == [6]
    assert await streams.exists("r1")
    assert await entry_ids(redis, streams.key("r1")) == ids(1, 2, 3, 4, 5, 6)


async def test_one_call_appends_to_several_streams_each_with_its_own_result(streams: RunStreams, redis: Redis) -> None:
    await streams.append([("ended", logged("ended", 1, RunStarted(None), Interrupted(StopReason.SUPERSEDED)))])
    await streams.append([("partly", logged("partly", 1, RunStarted(None), TextDelta("a")))])

    results = await streams.append(
        [
            ("new", logged("new", 1, RunStarted(None), TextDelta("x"), TextDelta("y"))),
            ("ended", texts("ended", 3, 2)),
            ("gone", texts("gone", 7, 1)),
            ("partly", texts("partly", 2, 3)),  # seq 2 is there already
            ("empty", []),
        ]
    )

    assert results == [3, STREAM_ENDED, STREAM_GONE, 2, 0]
    assert await entry_ids(redis, streams.key("new")) == ids(1, 2, 3)
    assert await entry_ids(redis, streams.key("ended")) == ids(1, 2)
    assert not await streams.exists("gone")
    assert await entry_ids(redis, streams.key("partly")) == ids(1, 2, 3, 4)
    assert not await streams.exists("empty")


# -- follow -----------------------------------------------------------------------------------


async def test_follow_yields_the_frames_after_a_seq_and_ends_with_the_terminal(streams: RunStreams) -> None:
    log = logged("r1", 1, RunStarted(None), TextDelta("a"), TextDelta("b"), TextDelta("c"))
    terminal = logged("r1", 5, Interrupted(StopReason.USER_STOP))
    await streams.append([("r1", log + terminal)])

    asked = 0

    async def run_ended(_last_seq: int) -> bytes | None:
        nonlocal asked
        asked += 1
        return None

    assert b"".join(await follow_all(streams, "r1", 2, run_ended)) == wire(log[2:] + terminal)
    assert b"".join(await follow_all(streams, "r1", 0, run_ended)) == wire(log + terminal)
    assert b"".join(await follow_all(streams, "r1", 4, run_ended)) == wire(terminal)
    assert asked == 0  # the terminal was in the stream: the row was never needed


async def test_follow_waits_through_a_quiet_stream_and_delivers_events_live(
    streams: RunStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams_module, "READ_BLOCK_MS", 20)  # to see the quiet-stream check soon
    asked = asyncio.Event()

    async def still_running(_last_seq: int) -> bytes | None:
        asked.set()
        return None

    received: asyncio.Queue[bytes] = asyncio.Queue()

    async def follower() -> None:
        async with contextlib.aclosing(streams.follow("r1", 0, still_running)) as frames:
            async for frame in frames:
                received.put_nowait(frame)

    async def frames_until(expected: bytes) -> bytes:
        got = b""
        while len(got) < len(expected):
            got += await received.get()
        return got

    task = asyncio.create_task(follower())
    try:
        async with asyncio.timeout(HANG_TIMEOUT_S):
            # The stream does not exist yet (a join right after the run started): quiet, and the
            # run is not over, so the follower keeps reading.
            await asked.wait()
            head = logged("r1", 1, RunStarted(None), TextDelta("a"))
            await streams.append([("r1", head)])
            assert await frames_until(wire(head)) == wire(head)
            middle = texts("r1", 3, 3)
            await streams.append([("r1", middle)])
            assert await frames_until(wire(middle)) == wire(middle)
            assert not task.done()
            terminal = logged("r1", 6, Interrupted(StopReason.USER_STOP))
            await streams.append([("r1", terminal)])
            assert await frames_until(wire(terminal)) == wire(terminal)
            await task  # ended by itself after the terminal
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert received.empty()


async def test_follow_ends_with_the_rows_terminal_when_the_stream_has_none(
    streams: RunStreams, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(streams_module, "READ_BLOCK_MS", 20)
    log = logged("r1", 1, RunStarted(None), TextDelta("a"), TextDelta("b"))
    await streams.append([("r1", log)])
    from_row = logged("r1", 9, Failed("worker_lost", "the worker running it stopped responding"))[0].wire
    calls = 0

    async def ended_after_a_few_checks(_last_seq: int) -> bytes | None:
        nonlocal calls
        calls += 1
        return from_row if calls >= 3 else None

    batches = await follow_all(streams, "r1", 1, ended_after_a_few_checks)
    assert b"".join(batches) == wire(log[1:]) + from_row
    assert batches[-1] == from_row
    assert calls == 3

    # A stream that is gone altogether (expired, or lost with Redis): only the row's terminal.
    async def ended(_last_seq: int) -> bytes | None:
        return from_row

    assert await follow_all(streams, "lost", 0, ended) == [from_row]


# -- publisher --------------------------------------------------------------------------------


def new_run(run_id: str) -> Run:
    return Run(RunRequest(run_id, None, "u", "m", None), encode=encode_event)


def log_wires(run: Run) -> list[tuple[bytes, bytes]]:
    """(entry id, frame) of every event of the run's log that a stream mirrors."""
    return [(f"0-{e.seq}".encode(), e.wire) for e in run.log.since(0) if e.wire]


async def stream_wires(redis: Redis, key: str) -> list[tuple[bytes, bytes]]:
    return [(entry_id, fields[b"w"]) for entry_id, fields in await entries(redis, key)]


async def test_flush_mirrors_a_runs_log_once_and_drops_the_run_after_its_terminal(
    streams: RunStreams, redis: Redis
) -> None:
    run = new_run("p1")
    publisher = StreamPublisher(streams, give_up_after_s=60.0)
    publisher.add(run)
    key = streams.key("p1")
    for i in range(5):
        run.emit_text(f"t{i} ")
    run.emit(UpstreamOpened())  # no SSE frame: not mirrored, and its seq stays unused
    run.emit_text("after")

    await publisher.flush()
    assert await stream_wires(redis, key) == log_wires(run)
    assert await entry_ids(redis, key) == ids(1, 2, 3, 4, 5, 6, 8)
    await publisher.flush()
    assert await stream_wires(redis, key) == log_wires(run)
    assert publisher.pending == 1

    run.cancel(StopReason.USER_STOP)
    assert run.log.closed
    await publisher.flush()
    mirrored = await stream_wires(redis, key)
    assert mirrored == log_wires(run)
    assert mirrored[-1][1] == run.log.since(0)[-1].wire
    assert (await entries(redis, key))[-1][1][b"t"] == b"1"
    assert 0 < await redis.ttl(key) <= FINISHED_TTL_S
    # Its terminal is in: the publisher forgets the run (within a flush), adding nothing more.
    for _ in range(2):
        if publisher.pending:
            await publisher.flush()
    assert publisher.pending == 0
    assert await stream_wires(redis, key) == mirrored


async def test_flush_rebuilds_a_stream_redis_lost_from_seq_1(streams: RunStreams, redis: Redis) -> None:
    run = new_run("p2")
    publisher = StreamPublisher(streams, give_up_after_s=60.0)
    publisher.add(run)
    key = streams.key("p2")
    for i in range(3):
        run.emit_text(f"t{i} ")
    await publisher.flush()
    assert await entry_ids(redis, key) == ids(1, 2, 3, 4)

    await redis.delete(key)  # Redis restarted without persistence: the stream is gone
    for i in range(3, 6):
        run.emit_text(f"t{i} ")
    await rebuilt(publisher, redis, key, run)
    assert await stream_wires(redis, key) == log_wires(run)
    assert await entry_ids(redis, key) == ids(*range(1, run.log.last_seq + 1))

    # The run goes on and ends; the rebuilt stream takes the rest once, then the terminal.
    run.emit_text("last")
    await redis.delete(key)
    run.cancel(StopReason.USER_STOP)
    await rebuilt(publisher, redis, key, run)
    assert await entry_ids(redis, key) == ids(*range(1, run.log.last_seq + 1))
    assert await stream_wires(redis, key) == log_wires(run)
    assert 0 < await redis.ttl(key) <= FINISHED_TTL_S
    for _ in range(2):
        if publisher.pending:
            await publisher.flush()
    assert publisher.pending == 0


async def rebuilt(publisher: StreamPublisher, redis: Redis, key: str, run: Run) -> None:
    """Flush until the stream has the run's last event (the first flush learns the stream is gone)."""
    flushes = 0
    while (await entry_ids(redis, key))[-1:] != ids(run.log.last_seq):
        assert flushes < 3, f"the stream was not rebuilt: {await entry_ids(redis, key)}"
        await publisher.flush()
        flushes += 1
    assert flushes == 2  # one that found the stream gone, one that sent the whole log again


async def test_flush_stops_mirroring_a_run_whose_stream_another_worker_ended(streams: RunStreams, redis: Redis) -> None:
    run = new_run("p3")
    publisher = StreamPublisher(streams, give_up_after_s=60.0)
    publisher.add(run)
    run.emit_text("a")
    await publisher.flush()
    # Another worker took this one for lost, and ended the run's stream.
    abandoned = logged("p3", ABANDONED_RUN_LAST_SEQ, Failed("worker_lost", "gone"))
    assert await streams.append([("p3", abandoned)]) == [1]
    run.emit_text("b")
    await publisher.flush()
    assert publisher.pending == 0
    assert await entry_ids(redis, streams.key("p3")) == ids(1, 2, ABANDONED_RUN_LAST_SEQ)


def test_a_quiet_stream_ends_with_the_rows_event_only_when_nothing_more_can_come() -> None:
    from datetime import timedelta

    from app.api.sse import REPUBLISH_GRACE_S, _nothing_more_will_come
    from app.store.models import RunRow, utcnow

    def row(**fields: Any) -> RunRow:
        return RunRow(id="r", status="interrupted", last_seq=40, error_code=None, ended_at=utcnow(), **fields)

    # Just ended, the follower at seq 9: the owner may still be writing a stream Redis lost.
    assert not _nothing_more_will_come(row(), 9)
    # Everything but the terminal event has been sent: nothing else can come.
    assert _nothing_more_will_come(row(), 39)
    # Long after the end, nobody is writing the stream any more.
    long_ago = utcnow() - timedelta(seconds=REPUBLISH_GRACE_S + 1)
    assert _nothing_more_will_come(RunRow(id="r", status="completed", last_seq=40, ended_at=long_ago), 9)
    # The owner is gone: nobody will publish.
    lost = RunRow(id="r", status="failed", last_seq=1_000_000_000, error_code="worker_lost", ended_at=utcnow())
    assert _nothing_more_will_come(lost, 9)
    assert not _nothing_more_will_come(RunRow(id="r", status="running", last_seq=0, ended_at=None), 9)
