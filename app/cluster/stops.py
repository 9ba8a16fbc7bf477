"""Stops between workers: a message on the owner's Redis channel, the database row behind it.

The row (``stop_requested_at``, ``stop_reason``, ``stop_mode``) is the source of truth, written
before the message is sent. The message only makes the stop land within milliseconds: pub/sub
delivers to whoever is subscribed at that instant, and a message sent while the owner's
subscriber is reconnecting is gone (PUBLISH then counts 0 receivers). So the owner re-reads
its rows after every (re)subscribe, which Redis confirms with a ``subscribe`` message (redis-py
also resubscribes by itself after a dropped connection; that confirmation comes too), and
every ``reconcile_s``: see :mod:`app.cluster.node`.
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


class StopMessage(msgspec.Struct, frozen=True):
    runId: str
    reason: str
    mode: str


_decode = msgspec.json.Decoder(StopMessage).decode
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True, slots=True)
class StopBus:
    redis: Redis
    prefix: str

    def channel(self, worker_id: str) -> str:
        return f"{self.prefix}:stop:{worker_id}"

    async def send(self, worker_id: str, message: StopMessage) -> int:
        """Publish a stop to a worker; returns how many subscribers got it (0: the row must do)."""
        receivers: int = await self.redis.publish(self.channel(worker_id), _encode(message))
        return receivers

    async def listen(
        self,
        worker_id: str,
        on_stop: Callable[[StopMessage], None],
        on_subscribed: Callable[[], None],
    ) -> None:
        """Receive this worker's stops forever, reconnecting with backoff. Cancel to end."""
        backoff = Backoff()
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel(worker_id))
                    async for message in pubsub.listen():
                        backoff.reset()
                        self._dispatch(message, on_stop, on_subscribed)
            except (RedisError, OSError) as exc:
                delay = backoff.next()
                log.warning("stop channel lost (%s); resubscribing in %.2f s", exc, delay)
                await asyncio.sleep(delay)

    @staticmethod
    def _dispatch(
        message: dict[str, object], on_stop: Callable[[StopMessage], None], on_subscribed: Callable[[], None]
    ) -> None:
        kind = message.get("type")
        if kind == "subscribe":
            on_subscribed()
        elif kind == "message":
            data = message.get("data")
            try:
                on_stop(_decode(data if isinstance(data, bytes | str) else b""))
            except msgspec.DecodeError:
                log.warning("ignored a malformed stop message: %r", data)
