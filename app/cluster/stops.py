"""Stops between workers: a broadcast the owner answers, and the database row behind it.

A stop for a run this worker does not hold is published at once on ``<prefix>:stops``, which
every worker hears; the one that holds the run checks the user, calls ``Run.cancel()`` and
answers on the sender's ``<prefix>:replies:<worker>`` with the outcome, so the sender can
answer its client exactly as the owner would have (202 stopping, 200 too late, 403). Nothing
waits for the database on that path: measured with hundreds of runs starting, a stop that read
and wrote the run's row first waited seconds for a pooled connection.

The row stays the source of truth for the stops nobody answered: pub/sub delivers only to whoever
is subscribed at that instant (a message sent while the owner's subscriber reconnects is gone).
Then the sender writes ``stop_requested_at`` / ``stop_reason`` / ``stop_mode`` into the row, and
the owner finds it when it re-reads its rows: after every (re)subscribe, which Redis confirms
with a ``subscribe`` message (redis-py resubscribes by itself after a dropped connection, and
that confirmation comes too), and every ``reconcile_s`` (see :mod:`app.cluster.node`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cluster.backoff import Backoff

log = logging.getLogger(__name__)


class StopMessage(msgspec.Struct, frozen=True, tag="stop"):
    runId: str
    reason: str
    mode: str
    # The user asking: the owner stops only that user's run. None: Runforge itself (a new run
    # superseding, a client gone from a joined stream, reconciliation).
    userId: str | None = None
    # Where to answer (the sender's worker id) and what to quote; None: nobody waits.
    replyTo: str | None = None
    ticket: str | None = None


class StopReply(msgspec.Struct, frozen=True, tag="reply"):
    ticket: str
    runId: str
    # A CancelOutcome (stopping | deferred | already_stopping | too_late), or forbidden.
    outcome: str
    status: str  # the run's status after the stop
    mode: str


class ForgetApp(msgspec.Struct, frozen=True, tag="forget"):
    """An app was deleted: forget its finished runs (their ids may be used again)."""

    appId: str


FORBIDDEN = "forbidden"
# The stop channels' connection is pinged after this much silence, and dropped after this much.
PING_AFTER_S = 5.0
DEAD_AFTER_S = 15.0

_decode = msgspec.json.Decoder(StopMessage | StopReply | ForgetApp).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class StopBus:
    redis: Redis
    prefix: str

    @property
    def stops_channel(self) -> str:
        return f"{self.prefix}:stops"

    def replies_channel(self, worker_id: str) -> str:
        return f"{self.prefix}:replies:{worker_id}"

    async def broadcast(self, message: StopMessage | ForgetApp) -> int:
        """Publish a stop to every worker; returns how many heard it (0: the row must do)."""
        receivers: int = await self.redis.publish(self.stops_channel, _encode(message))
        return receivers

    async def reply(self, worker_id: str, reply: StopReply) -> None:
        await self.redis.publish(self.replies_channel(worker_id), _encode(reply))

    async def listen(
        self,
        worker_id: str,
        on_stop: Callable[[StopMessage | ForgetApp], None],
        on_reply: Callable[[StopReply], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        """Receive stops and replies forever, reconnecting with backoff. Cancel to end.

        A quiet connection is pinged: one that a partition left half-open would otherwise stay
        silent for hours (until TCP keepalive gives up), and stops would land only by
        reconciliation meanwhile.
        """
        backoff = Backoff()
        loop = asyncio.get_running_loop()
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.stops_channel, self.replies_channel(worker_id))
                    heard_at, pinged = loop.time(), False
                    while True:
                        message = await pubsub.get_message(timeout=PING_AFTER_S)
                        if message is not None:
                            heard_at, pinged = loop.time(), False
                            backoff.reset()
                            _dispatch(message, on_stop, on_reply, on_subscribed)
                        elif loop.time() - heard_at > DEAD_AFTER_S:
                            raise ConnectionError(f"no answer to PING for {DEAD_AFTER_S:.0f} s")
                        elif not pinged:
                            await pubsub.ping()  # answered by a "pong" message
                            pinged = True
            except (RedisError, OSError) as exc:
                delay = backoff.next()
                log.warning("stop channel lost (%s); resubscribing in %.2f s", exc, delay)
                await asyncio.sleep(delay)


def _dispatch(
    message: dict[str, object],
    on_stop: Callable[[StopMessage | ForgetApp], None],
    on_reply: Callable[[StopReply], None],
    on_subscribed: Callable[[], None],
) -> None:
    kind = message.get("type")
    if kind == "subscribe":
        on_subscribed()
        return
    if kind != "message":
        return
    data = message.get("data")
    try:
        decoded = _decode(data if isinstance(data, bytes | str) else b"")
    except msgspec.DecodeError:
        log.warning("ignored a malformed message on the stop channels: %r", data)
        return
    if isinstance(decoded, StopReply):
        on_reply(decoded)
    else:
        on_stop(decoded)
