"""Each run's events in a Redis Stream, so any worker can serve ``GET /runs/{id}/events``.

The owner's copy of the log stays in memory and its own followers read that. One publisher per
worker mirrors the logs of all its runs into ``<prefix>:run:<id>:events``: every
``PUBLISH_INTERVAL_S`` it sends what every run logged since, in one script call. Measured, a
call per run per batch cost the owner more CPU than streaming the events to its own clients
(hundreds of runs, a token every 15 ms each); one call per interval costs one round trip. Joins
on other workers see events up to one interval late; a run's own stream is never delayed.

Entry ids are ``0-<seq>``: the SSE id ``<runId>:<seq>`` maps to one entry, a join from
``Last-Event-ID`` is ``XREAD`` after ``0-<seq>``, and the stream refuses an id that is not newer,
so events sent twice (a retry after a dropped connection) are added once. The append is one Lua
script, atomic in Redis:

- entries with a seq not above the stream's last are skipped (idempotent retries);
- nothing is appended after a terminal entry (``t`` field): when another worker declared the
  owner lost and wrote ``failed``, a late owner cannot add events after it;
- a terminal entry sets the stream's expiry to the finished-stream TTL; a stream's first entry
  gets a long one, so a stream nobody ends (every worker gone) does not stay forever.

Only events with an SSE frame are mirrored (a chat run's relay-only chunks are for its /v1
client, which is always on the owner).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cluster.backoff import Backoff
from app.control.events import LoggedEvent
from app.control.run import Run
from app.wire.pieces import pieces

log = logging.getLogger(__name__)

TERMINAL_KINDS = frozenset({"done", "interrupted", "failed"})
STREAM_ENDED = -1
STREAM_GONE = -2
PUBLISH_INTERVAL_S = 0.05
# At most this many events in one script call (Redis runs a script alone: keep each call short).
MAX_EVENTS_PER_CALL = 2000
# A stream nobody ends (its owner and every other worker gone) still expires.
UNFINISHED_TTL_S = 7 * 24 * 3600
# XREAD blocks this long at most, then the reader checks whether the run ended without a
# terminal entry (a stream lost with a Redis restart).
READ_BLOCK_MS = 2000
READ_COUNT = 512

# KEYS: the streams. ARGV: finished TTL, unfinished TTL, then for each stream the number of its
# events followed by seq, kind, frame, terminal (1|0) per event. Returns, per stream, the number
# of events added; -1 if the stream had ended already; -2 if the stream is gone (Redis restarted
# empty) and these events do not start at seq 1: the publisher then sends the whole log again.
_APPEND = """
local argi = 3
local result = {}
for k = 1, #KEYS do
  local n = tonumber(ARGV[argi])
  argi = argi + 1
  local status = nil
  local last_seq = 0
  local last = redis.call('XREVRANGE', KEYS[k], '+', '-', 'COUNT', 1)
  if #last == 0 then
    if n > 0 and tonumber(ARGV[argi]) > 1 then status = -2 end
  else
    local fields = last[1][2]
    for i = 1, #fields, 2 do
      if fields[i] == 't' then status = -1 end
    end
    last_seq = tonumber(string.match(last[1][1], '-(%d+)$'))
  end
  local added = 0
  if status == nil then
    for e = 0, n - 1 do
      local i = argi + 4 * e
      local seq = tonumber(ARGV[i])
      if seq > last_seq then
        if ARGV[i + 3] == '1' then
          redis.call('XADD', KEYS[k], '0-' .. seq, 'k', ARGV[i + 1], 'w', ARGV[i + 2], 't', '1')
          redis.call('EXPIRE', KEYS[k], ARGV[1])
          added = added + 1
          break
        end
        redis.call('XADD', KEYS[k], '0-' .. seq, 'k', ARGV[i + 1], 'w', ARGV[i + 2])
        if #last == 0 and added == 0 then redis.call('EXPIRE', KEYS[k], ARGV[2]) end
        added = added + 1
        last_seq = seq
      end
    end
  end
  result[k] = status or added
  argi = argi + 4 * n
end
return result
"""


class RunStreams:
    def __init__(self, redis: Redis, prefix: str, finished_ttl_s: float) -> None:
        self._redis = redis  # protocol 2 (the default): replies as lists and tuples
        self._prefix = prefix
        self._finished_ttl = max(1, int(finished_ttl_s))
        self._append = redis.register_script(_APPEND)

    def key(self, run_id: str) -> str:
        return f"{self._prefix}:run:{run_id}:events"

    async def append(self, batches: Sequence[tuple[str, Sequence[LoggedEvent]]]) -> list[int]:
        """Append each run's events to its stream (skipping any a stream has), in one call.

        Returns, per run, how many events were added; -1 where the stream had ended already.
        """
        keys: list[str] = []
        args: list[str | bytes | int] = [self._finished_ttl, UNFINISHED_TTL_S]
        for run_id, events in batches:
            keys.append(self.key(run_id))
            args.append(len(events))
            for event in events:
                args += [event.seq, event.kind, event.wire, 1 if event.kind in TERMINAL_KINDS else 0]
        added: list[int] = await self._append(keys=keys, args=args)
        return added

    async def exists(self, run_id: str) -> bool:
        return bool(await self._redis.exists(self.key(run_id)))

    async def follow(
        self, run_id: str, after_seq: int, run_ended: Callable[[int], Awaitable[bytes | None]]
    ) -> AsyncGenerator[bytes, None]:
        """SSE frames after ``after_seq``, live, until the terminal one.

        ``run_ended(last_seq)`` is asked whenever the stream has been quiet for a while (never
        because Redis could not be read: that is a pause, not an end). Given the seq of the last
        frame sent, it returns the terminal frame to end with if no more will come (from the
        run's row), for a stream that lost its terminal entry (Redis restarted without
        persistence, the stream expired, the owner died before it was written).
        """
        last_id: str | bytes = f"0-{after_seq}"
        last_seq = after_seq
        key = self.key(run_id)
        backoff = Backoff()
        while True:
            try:
                # RESP2's shape, which this client speaks: [[key, [(entry id, {field: value}), ...]]].
                reply: Any = await self._redis.xread({key: last_id}, count=READ_COUNT, block=READ_BLOCK_MS)
                backoff.reset()
            except (RedisError, OSError) as exc:
                # Redis restarting: keep the client's stream open and read on from the same id.
                log.warning("reading run events failed (%s); retrying", exc, extra={"run_id": run_id})
                await asyncio.sleep(backoff.next())
                continue
            if not reply:
                try:
                    terminal = await run_ended(last_seq)
                except Exception as exc:  # the database away for a moment: the stream goes on
                    log.warning("could not check whether the run ended (%s)", exc, extra={"run_id": run_id})
                    terminal = None
                if terminal is not None:
                    yield terminal
                    return
                continue
            frames: list[bytes] = []
            ended = False
            for entry_id, fields in reply[0][1]:
                last_id = entry_id
                last_seq = int(entry_id.rpartition(b"-")[2])
                frames.append(fields[b"w"])
                if b"t" in fields:
                    ended = True
                    break
            for piece in pieces(frames):  # bounded writes: a stalled reader holds one piece
                yield piece
            if ended:
                return


@dataclass(slots=True)
class _Mirrored:
    run: Run
    sent_seq: int = 0  # the last seq the stream is known to have
    failing_since: float | None = None


class StreamPublisher:
    """Mirrors the logs of this worker's runs into their streams (see the module docstring)."""

    def __init__(self, streams: RunStreams, give_up_after_s: float) -> None:
        self._streams = streams
        self._give_up_after_s = give_up_after_s
        self._runs: dict[str, _Mirrored] = {}
        self._backoff = Backoff(first_s=PUBLISH_INTERVAL_S, cap_s=2.0)

    def add(self, run: Run) -> None:
        self._runs[run.id] = _Mirrored(run)

    @property
    def pending(self) -> int:
        return len(self._runs)

    async def run_forever(self) -> None:
        while True:
            delay = PUBLISH_INTERVAL_S
            try:
                await self.flush()
                self._backoff.reset()
            except (RedisError, OSError) as exc:
                delay = self._backoff.next()
                log.warning("could not publish run events (%s); retrying in %.2f s", exc, delay)
                self._give_up_on_old_failures()
            await asyncio.sleep(delay)  # the publishing period: batches are what make it cheap

    async def drain(self, timeout_s: float) -> None:
        """Publish until every run's stream has its terminal event (shutdown), or time is up."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._runs and loop.time() < deadline:
            try:
                await self.flush()
            except (RedisError, OSError) as exc:
                log.warning("could not publish run events at shutdown: %s", exc)
            if self._runs:
                await asyncio.sleep(PUBLISH_INTERVAL_S)

    async def flush(self) -> None:
        """One script call with everything logged since the last flush."""
        batches: list[tuple[_Mirrored, list[LoggedEvent]]] = []
        budget = MAX_EVENTS_PER_CALL
        for mirrored in list(self._runs.values()):
            events = [event for event in mirrored.run.log.since(mirrored.sent_seq) if event.wire][:budget]
            if events:
                batches.append((mirrored, events))
                budget -= len(events)
            elif mirrored.run.log.closed:
                del self._runs[mirrored.run.id]  # everything it logged is in its stream
            if budget <= 0:
                break
        if not batches:
            return
        try:
            results = await self._streams.append([(m.run.id, events) for m, events in batches])
        except (RedisError, OSError):
            now = asyncio.get_running_loop().time()
            for mirrored, _ in batches:
                mirrored.failing_since = mirrored.failing_since or now
            raise
        for (mirrored, events), added in zip(batches, results, strict=True):
            mirrored.failing_since = None
            if added == STREAM_GONE:
                mirrored.sent_seq = 0  # Redis lost it (a restart): the log is here, send it all again
            elif added == STREAM_ENDED:
                self._runs.pop(mirrored.run.id, None)  # ended by another worker: we were taken for lost
            else:
                mirrored.sent_seq = events[-1].seq

    def _give_up_on_old_failures(self) -> None:
        now = asyncio.get_running_loop().time()
        for run_id, mirrored in list(self._runs.items()):
            if mirrored.failing_since is not None and now - mirrored.failing_since > self._give_up_after_s:
                log.error("gave up publishing the events of run %s", run_id)
                del self._runs[run_id]
