"""This worker's part in a multi-worker deployment (``RUNFORGE_BROKER_URL`` set).

One ``Cluster`` per process. It

- mirrors every run it owns into a Redis Stream (:mod:`app.cluster.streams`);
- sends stops to the worker that owns a run and takes the stops sent to it
  (:mod:`app.cluster.stops`), and re-reads its own rows after every (re)subscribe and every
  ``reconcile_s``, so a stop whose message was lost still lands;
- heartbeats, and fails the runs of workers that stopped heartbeating (``worker_lost``),
  ending their streams with that terminal event;
- makes room for a new run when the app's active run is on another worker.

The database row is the truth about a run; Redis carries signals and event copies. Everything
here survives Redis going away and coming back: loops reconnect with backoff, and appends are
idempotent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
from collections.abc import Coroutine
from typing import Any, Protocol

import msgspec
from redis.asyncio import Redis
from redis.exceptions import RedisError

from app.cluster.stops import FORBIDDEN, ForgetApp, StopBus, StopMessage, StopReply
from app.cluster.streams import RunStreams, StreamPublisher
from app.control.cancel import StopMode, StopReason
from app.control.events import Failed
from app.control.run import ACTIVE_STATUSES, RUN_ID_PATTERN, Run
from app.errors import AppBusy, Conflict
from app.settings import ClusterSettings
from app.store.db import Database
from app.store.repo import ABANDONED_RUN_LAST_SEQ, WORKER_LOST, Runs, Workers
from app.wire.sse import encode_event

log = logging.getLogger(__name__)

# How long a new run waits for the app's active run on another worker to end after its stop,
# at least: longer than a lost owner takes to be found (its run then ends worker_lost).
MAKE_ROOM_TIMEOUT_S = 15.0
# How long a stop for a run of another worker waits for the owner's answer before it takes the
# durable path (the row). Generous for a loaded owner: the answer normally takes a millisecond.
STOP_REPLY_TIMEOUT_S = 0.5
ROW_POLL_S = 0.02
# Rows of workers silent this long are deleted (their runs were failed long before).
FORGET_WORKERS_AFTER_S = 24 * 3600.0
LOST_MESSAGE = "the worker running it stopped responding"


class LocalRuns(Protocol):
    """What the cluster needs from this worker's run manager."""

    def get(self, run_id: str) -> Run | None: ...
    def forget_app(self, app_id: str) -> None: ...
    def remember_stop(self, user_id: str, run_id: str, mode: StopMode) -> None: ...


def new_worker_id() -> str:
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


class Cluster:
    def __init__(
        self,
        settings: ClusterSettings,
        worker_id: str,
        runs: Runs,
        workers: Workers,
        *,
        control_runs: Runs | None = None,
        control_db: Database | None = None,
    ) -> None:
        if settings.broker_url is None:
            raise ValueError("a cluster needs a broker URL")
        self.settings = settings
        self.worker_id = worker_id
        # Requests' work (making room, recording stops) shares the server's connections; the
        # loops' (heartbeats, sweeps, reconciliation) has its own, so a burst of requests cannot
        # delay a heartbeat until the worker is taken for lost (measured: 12 s behind 500 starts).
        self._runs = runs
        self._control_runs = control_runs or runs
        self._workers = workers
        self._control_db = control_db  # closed at stop
        self._redis = Redis.from_url(
            settings.broker_url, protocol=2, socket_connect_timeout=2.0, socket_keepalive=True, health_check_interval=5
        )
        self.streams = RunStreams(self._redis, settings.prefix, settings.stream_ttl_s)
        self._publisher = StreamPublisher(self.streams, give_up_after_s=max(settings.stream_ttl_s, 60.0))
        self._bus = StopBus(self._redis, settings.prefix)
        self._local: LocalRuns | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._replies: dict[str, asyncio.Future[StopReply]] = {}
        self._beating_since: float | None = None  # loop time of the first beat of the current streak
        self._reconcile_now = asyncio.Event()

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self, local: LocalRuns) -> None:
        self._local = local
        try:
            await self._redis.ping()  # fail at start, not at the first stop
        except (RedisError, OSError) as exc:
            raise RuntimeError(
                f"the broker (RUNFORGE_BROKER_URL) at {self._redis_location()} is unreachable: {exc}"
            ) from exc
        await self._workers.register(self.worker_id, socket.gethostname(), os.getpid())
        listen = self._bus.listen(self.worker_id, self._on_message, self._on_reply, self._reconcile_now.set)
        self._spawn(listen, "stop-listener")
        self._spawn(self._reconcile_loop(), "reconciler")
        self._spawn(self._heartbeat_loop(), "heartbeat")
        self._spawn(self._sweep_loop(), "sweeper")
        self._spawn(self._publisher.run_forever(), "stream-publisher")
        log.info("worker %s joined the cluster (broker %s)", self.worker_id, self._redis_location())

    async def stop(self, publish_grace_s: float = 2.0) -> None:
        """After the run manager's shutdown: publish the runs' last events, then leave."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._publisher.drain(publish_grace_s)
        try:
            await self._workers.mark_stopped(self.worker_id)
        except Exception:
            log.exception("could not mark this worker stopped; the others will see it go silent")
        await self._redis.aclose()
        if self._control_db is not None:
            await self._control_db.dispose()

    # -- hooks of the run manager ----------------------------------------------------------

    def launched(self, run: Run) -> None:
        """A run of this worker started: mirror its events for followers on other workers."""
        self._publisher.add(run)

    def forget_app(self, app_id: str, run_ids: list[str]) -> None:
        """An app was deleted: its runs' streams go, and every worker forgets its finished runs,
        so a run id used again (they are free once the rows are gone) is never the old run."""
        self._spawn(_log_errors(self._forget_app(app_id, run_ids), "could not forget a deleted app's runs"), "forget")

    async def _forget_app(self, app_id: str, run_ids: list[str]) -> None:
        if run_ids:
            await self._redis.delete(*(self.streams.key(run_id) for run_id in run_ids))
        await self._bus.broadcast(ForgetApp(app_id))

    async def make_room(self, app_id: str, reject: bool, busy: AppBusy | None = None) -> None:
        """Wait until the app has no active run on another worker, stopping it (superseded)
        unless ``reject``, in which case an active run that is not stopping is a 409.

        ``busy``: the active run the insert's check found (no need to look it up again).
        """
        if busy is None:
            active = await self._runs.active_run_of_app(app_id)
            if active is None:
                return
            busy = AppBusy(app_id, *active)
        if busy.owner_worker == self.worker_id:
            await self._fail_if_stale(busy.run_id)
            return  # one of ours: the manager's own rule has handled it
        if reject and not busy.stop_requested:
            raise Conflict(f"app {app_id} already has an active run {busy.run_id}", code="run_active")
        await self.request_stop(busy.run_id, StopReason.SUPERSEDED, StopMode.IMMEDIATE)
        timeout_s = max(MAKE_ROOM_TIMEOUT_S, self.settings.worker_timeout_s + 3 * self.settings.heartbeat_s)
        if not await self.wait_ended(busy.run_id, timeout_s):
            raise Conflict(
                f"app {app_id}'s run {busy.run_id} on another worker did not stop in time", code="run_active"
            )

    # -- commands from handlers ------------------------------------------------------------

    async def broker_reachable(self) -> bool:
        """Whether Redis answers a PING now (for readiness probes)."""
        try:
            return bool(await self._redis.ping())
        except (RedisError, OSError):
            return False

    async def stop_remote(self, run_id: str, user_id: str, reason: StopReason, mode: StopMode) -> StopReply | None:
        """Stop a run some other worker holds, as its user: the owner's answer, or None if no
        worker answered in time (then nothing is known, and the row is the way: request_stop)."""
        ticket = secrets.token_hex(8)
        answer: asyncio.Future[StopReply] = asyncio.get_running_loop().create_future()
        self._replies[ticket] = answer
        message = StopMessage(run_id, reason.value, mode.value, user_id, self.worker_id, ticket)
        try:
            await self._bus.broadcast(message)
            async with asyncio.timeout(STOP_REPLY_TIMEOUT_S):
                return await answer
        except (RedisError, OSError) as exc:
            log.warning("could not broadcast a stop (%s); recording it in the database", exc)
            return None
        except TimeoutError:
            return None
        finally:
            del self._replies[ticket]

    async def request_stop(self, run_id: str, reason: StopReason, mode: StopMode) -> bool:
        """The durable stop: record it in the row (the truth), then tell every worker.

        Returns False if the row was no longer active or a stop had already been recorded. The
        owner acts on the message, or on the row at its next reconciliation if the message is lost.
        """
        recorded = await self._runs.request_stop(run_id, reason.value, mode.value)
        try:
            if await self._bus.broadcast(StopMessage(run_id, reason.value, mode.value)) == 0:
                log.info("stop for %s had no receiver; the owner's reconciliation will find it", run_id)
        except (RedisError, OSError) as exc:
            log.warning("could not send a stop (%s); the owner's reconciliation will find it", exc)
        return recorded

    async def wait_ended(self, run_id: str, timeout_s: float) -> bool:
        """Until the run's row is final (its task has ended and recorded it), up to timeout_s."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    row = await self._runs.get(run_id)
                    if row is None or row.status not in ACTIVE_STATUSES:
                        return True
                    await asyncio.sleep(ROW_POLL_S)  # a row on another worker announces nothing
        except TimeoutError:
            return False

    # -- stops sent to this worker ---------------------------------------------------------

    def _on_message(self, message: StopMessage | ForgetApp) -> None:
        if isinstance(message, ForgetApp):
            if self._local is not None:
                self._local.forget_app(message.appId)
        else:
            self._on_stop(message)

    def _on_stop(self, message: StopMessage) -> None:
        run = self._local.get(message.runId) if self._local else None
        if run is None:
            self._remember(message)
            return  # not (or no longer) here: its owner answers, or reconciliation settles its row
        if message.userId is not None and message.userId != run.user_id:
            self._answer(message, StopReply("", run.id, FORBIDDEN, run.status.value, run.stop_mode.value))
            return
        try:
            reason, mode = StopReason(message.reason), StopMode(message.mode)
        except ValueError:
            log.warning("ignored a stop with an unknown reason or mode: %r", message)
            return
        outcome = run.cancel(reason, mode)
        self._answer(message, StopReply("", run.id, outcome.value, run.status.value, run.stop_mode.value))

    def _remember(self, message: StopMessage) -> None:
        """A user's stop for a run no worker may have made yet: if this worker is the one about to
        make it, its start takes the stop (app/control/pending_stops.py)."""
        if self._local is None or message.userId is None or RUN_ID_PATTERN.fullmatch(message.runId) is None:
            return
        with contextlib.suppress(ValueError):
            self._local.remember_stop(message.userId, message.runId, StopMode(message.mode))

    def _answer(self, message: StopMessage, reply: StopReply) -> None:
        if message.replyTo is None or message.ticket is None:
            return
        answer = self._bus.reply(message.replyTo, msgspec.structs.replace(reply, ticket=message.ticket))
        self._spawn(_log_errors(answer, "could not answer a stop"), f"stop-reply:{message.runId}")

    def _on_reply(self, reply: StopReply) -> None:
        answer = self._replies.get(reply.ticket)
        if answer is not None and not answer.done():
            answer.set_result(reply)

    async def _reconcile_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._reconcile_now.wait(), timeout=self.settings.reconcile_s)
            self._reconcile_now.clear()
            try:
                await self.reconcile()
            except Exception as exc:
                log.warning("reconciliation failed (%s); retrying in %.1f s", exc, self.settings.reconcile_s)

    async def reconcile(self) -> None:
        """Compare this worker's rows with its runs in memory, and act on the difference."""
        for run_id, status, reason, mode, stop_requested in await self._control_runs.owned_active_or_lost(
            self.worker_id
        ):
            run = self._local.get(run_id) if self._local else None
            if status == "failed":  # another worker declared us lost: its clients were told so
                if run is not None:
                    run.cancel(StopReason.WORKER_LOST)
            elif run is None or run.finished:
                await self._fail_if_stale(run_id)
            elif stop_requested:
                self._on_stop(
                    StopMessage(run_id, reason or StopReason.USER_STOP.value, mode or StopMode.IMMEDIATE.value)
                )

    async def _fail_if_stale(self, run_id: str) -> None:
        """A row of ours that says active with no run in memory: its outcome was never written."""
        run = self._local.get(run_id) if self._local else None
        if run is None or run.finished:
            marked = await self._control_runs.fail_if_active(
                [run_id], "outcome_lost", "the run's outcome was not recorded"
            )
            await self._end_streams(marked, "outcome_lost", "the run's outcome was not recorded")

    # -- liveness --------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        """Beat every heartbeat_s, on connections of its own, waiting on nothing else (not Redis)."""
        loop = asyncio.get_running_loop()
        beats = 0
        while True:
            try:
                await self._beat()
                if self._beating_since is None:
                    self._beating_since = loop.time()
                beats += 1
                if beats % 3600 == 0:
                    await self._workers.forget_old(FORGET_WORKERS_AFTER_S)
            except Exception as exc:
                self._beating_since = None
                log.warning("heartbeat failed: %s", exc)
            await asyncio.sleep(self.settings.heartbeat_s)  # the heartbeat's period

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)  # the sweep's period
            if not self._beating_steadily():
                continue
            try:
                await self.sweep()
            except Exception as exc:
                log.warning("sweep for lost workers failed: %s", exc)

    def _beating_steadily(self) -> bool:
        """Whether this worker's own heartbeats have gone through for a whole worker timeout.

        Until then, others' stale heartbeats prove nothing: after a database outage every
        worker's heartbeat is stale, and the first to beat again would fail the live runs of all
        the others (measured: a 12 s outage did exactly that).
        """
        since = self._beating_since
        return since is not None and asyncio.get_running_loop().time() - since >= self.settings.worker_timeout_s

    async def _beat(self) -> None:
        if not await self._workers.heartbeat(self.worker_id):
            # Our row is gone or marked stopped: we were taken for lost. Our active runs get
            # cancelled by reconciliation; new runs need a live row, so register again.
            log.error("worker %s was taken for lost; registering again", self.worker_id)
            with contextlib.suppress(Exception):
                await self._workers.register(self.worker_id, socket.gethostname(), os.getpid())
            self._reconcile_now.set()

    async def sweep(self) -> list[str]:
        """Fail the active runs of workers that stopped heartbeating; end their streams."""
        lost = await self._workers.lost_runs(self.settings.worker_timeout_s)
        marked = await self._control_runs.fail_if_active(lost, WORKER_LOST, LOST_MESSAGE)
        if marked:
            log.warning("failed %d run(s) of lost workers: %s", len(marked), ", ".join(marked[:10]))
        await self._end_streams(marked, WORKER_LOST, LOST_MESSAGE)
        return marked

    async def _end_streams(self, run_ids: list[str], code: str, message: str) -> None:
        for run_id in run_ids:
            terminal = encode_event(run_id, ABANDONED_RUN_LAST_SEQ, Failed(code, message))
            try:
                await self.streams.append([(run_id, [terminal])])
            except (RedisError, OSError) as exc:
                # Followers still end: they check the row whenever the stream is quiet.
                log.warning("could not end the stream of %s: %s", run_id, exc)

    # -- internals -------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)

    def _redis_location(self) -> str:
        kwargs = self._redis.connection_pool.connection_kwargs
        return f"{kwargs.get('host', kwargs.get('path', '?'))}:{kwargs.get('port', '')}"


async def _log_errors(coro: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await coro
    except (RedisError, OSError) as exc:
        log.warning("%s: %s", what, exc)


def _log_crash(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("cluster task %s crashed", task.get_name(), exc_info=task.exception())
