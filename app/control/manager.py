"""The run manager: owns every run task of this process, one active run per app.

Handlers never touch tasks: they ask the manager to start and find runs, and stop a run
through ``Run.cancel``. A run is findable from before its first await, so a stop that races
its creation is never lost. Finished runs stay in memory, bounded in time and bytes
(app/control/retention.py), so late joiners can replay their events.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

from app.control.cancel import StopMode, StopReason
from app.control.event_log import EventEncoder
from app.control.pending_stops import PendingStops
from app.control.recording import OutcomeRetries, RecordAfterInsert, RetryOutcome, first_output
from app.control.request import Job, Multitask, RunRequest
from app.control.retention import RetainedRuns, RetentionLimits
from app.control.run import Run, RunRecorder, RunStatus
from app.errors import AppBusy, AppError, Conflict, ServiceUnavailable, TooManyRequests
from app.metrics import Metrics

log = logging.getLogger(__name__)


class RunStore(RunRecorder, Protocol):
    """What the manager needs from the database besides recording outcomes."""

    async def insert_run(self, run: Run) -> None:
        """Raises Conflict (run_id_taken) if the id is used, NotFound if the app is gone."""


class RunPeers(Protocol):
    """The other workers sharing the database (app/cluster); None in a single process."""

    def launched(self, run: Run) -> None:
        """A run of this worker has started (its events are mirrored for the others)."""

    def forget_app(self, app_id: str, run_ids: list[str]) -> None:
        """An app was deleted here: the other workers forget its finished runs, and their copies."""

    async def make_room(self, app_id: str, reject: bool, busy: AppBusy | None = None) -> None:
        """Until the app has no active run on another worker (stopped, or Conflict if reject).
        ``busy``: the active run the insert found, if that is how we know."""


# With several workers, a start can lose the race for an app to a start on another worker
# (the insert's check raises AppBusy): it makes room again, this many times in all.
START_ATTEMPTS = 3


class RunManager:
    def __init__(
        self,
        store: RunStore,
        job: Job,
        *,
        encode: EventEncoder,
        retention: RetentionLimits | None = None,
        peers: RunPeers | None = None,
        metrics: Metrics | None = None,
        max_active_per_user: int = 0,
        pending_stops: PendingStops | None = None,
    ) -> None:
        self._store = store
        self._pending_stops = pending_stops or PendingStops()
        self._max_active_per_user = max_active_per_user  # 0: no limit
        self.metrics = metrics or Metrics()
        self._job = job
        self._encode = encode  # every run's events, encoded once as they are logged (app/wire/sse.py)
        self._peers = peers
        self._active: dict[str, Run] = {}  # run id -> run, until its task is done
        self._active_by_app: dict[str, Run] = {}
        self._active_by_user: Counter[str] = Counter()
        self._retention = retention or RetentionLimits()
        self._finished = RetainedRuns(self._retention)
        self._tasks: set[asyncio.Task[None]] = set()
        # One lock per app serialises starts on that app; unused locks disappear by themselves.
        self._app_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        # Run ids being started: taken synchronously, so two starts cannot both claim one.
        self._reserved: set[str] = set()
        # Runs rejected because their row could not be written, until their task has ended:
        # never retained for lookups, and their id not reusable before then.
        self._rejected: dict[str, Run] = {}
        # Outcome writes being tried again; not run tasks: the runs have ended.
        self._outcome_writes = OutcomeRetries()
        self._closing = False

    # -- queries ---------------------------------------------------------------------------

    def get(self, run_id: str) -> Run | None:
        return self._active.get(run_id) or self._finished.get(run_id)

    def active_for_app(self, app_id: str) -> Run | None:
        return self._active_by_app.get(app_id)

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def retained_count(self) -> int:
        return len(self._finished)  # expired ones are not counted, even when no run has finished since

    @property
    def retained_bytes(self) -> int:
        return self._finished.size_bytes

    @property
    def pending_outcome_writes(self) -> int:
        """Ended runs whose final row the database has refused so far (being retried)."""
        return self._outcome_writes.pending

    # -- commands --------------------------------------------------------------------------

    def remember_stop(self, user_id: str, run_id: str, mode: StopMode) -> None:
        """A stop for a run not (yet) here: the user's start with this id, within the window, is
        stopped as it is made (app/control/pending_stops.py). Synchronous, like ``get``: between
        a ``get`` that found nothing and this call no start can make the run."""
        self._pending_stops.remember(user_id, run_id, mode)

    def forget_stop(self, user_id: str, run_id: str) -> None:
        """The remembered stop is moot (the id is another worker's run, or a finished one)."""
        self._pending_stops.forget(user_id, run_id)

    async def start(self, request: RunRequest) -> Run:
        if self._closing:
            raise Conflict("the server is shutting down", code="shutting_down")
        self._check_user_capacity(request)
        self._reserve(request.run_id)
        try:
            if request.app_id is None:
                return await self._create_and_launch(request)
            async with self._app_lock(request.app_id):
                return await self._start_on_app(request.app_id, request)
        finally:
            self._reserved.discard(request.run_id)

    async def _start_on_app(self, app_id: str, request: RunRequest) -> Run:
        """Make room on the app (this worker's run), then insert. With several workers the insert
        itself checks the app has no active run elsewhere, so the common case costs no extra
        query; a busy app (AppBusy) has its run stopped through its worker, and the insert is
        tried again."""
        await self._make_room(app_id, request.multitask)
        for attempt in range(1, START_ATTEMPTS + 1):
            try:
                # An id used by an earlier run fails the insert (unique key): 409 run_id_taken.
                return await self._create_and_launch(request)
            except AppBusy as busy:
                if self._peers is None or attempt == START_ATTEMPTS:
                    raise
                await self._peers.make_room(app_id, request.multitask is Multitask.REJECT, busy)
                await self._make_room(app_id, request.multitask)
        raise AssertionError("unreachable: the last attempt returns or raises")

    async def delete_app(self, app_id: str, delete: Callable[[], Awaitable[list[str]]]) -> None:
        """Stop the app's active run, wait until it has ended, then delete: no start can slip in.

        ``delete`` returns the ids of the app's runs it deleted.
        """
        async with self._app_lock(app_id):
            if self._peers is not None:  # a run of the app on another worker is stopped too
                await self._peers.make_room(app_id, reject=False)
            run = self._active_by_app.get(app_id)
            if run is not None:
                run.cancel(StopReason.USER_STOP)
                await run.wait_finished()
            run_ids = await delete()
            self.forget_app(app_id)
            if self._peers is not None:
                self._peers.forget_app(app_id, run_ids)

    def forget_app(self, app_id: str) -> None:
        """Drop the finished runs of a deleted app: their ids are free again, and a new run with
        one of them must not be mistaken for the old one (its events, its status)."""
        self._finished.discard_app(app_id)

    @contextlib.asynccontextmanager
    async def idle_app(self, app_id: str) -> AsyncIterator[None]:
        """Hold the app with no run active and none starting (e.g. to revert its workspace).

        Raises Conflict (run_active) when a run is active: changing files under a working
        agent would mix two histories.
        """
        async with self._app_lock(app_id):
            if self._peers is not None:  # Conflict for a run on another worker, as for one here
                await self._peers.make_room(app_id, reject=True)
            run = self._active_by_app.get(app_id)
            if run is not None:
                raise Conflict(f"app {app_id} has an active run {run.id}; stop it first", code="run_active")
            yield

    async def shutdown(self, grace_s: float) -> None:
        """Interrupt every active run (reason shutdown) and wait for them to record it."""
        self._closing = True
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace_s
        # Runs, not tasks: a run still being inserted has no task yet, and launches stopped.
        while self._active and loop.time() < deadline:
            runs = list(self._active.values())
            for run in runs:
                run.cancel(StopReason.SHUTDOWN)
            waiters = {asyncio.ensure_future(run.wait_finished()) for run in runs}
            try:
                await asyncio.wait(waiters, timeout=deadline - loop.time(), return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
        if self._tasks:
            pending = set(self._tasks)
            log.warning("%d run task(s) did not end within the shutdown grace", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=1.0)
        if self._outcome_writes.pending:
            # The database is closed next: these rows stay active, and the next start marks them
            # failed (server_restart).
            log.warning("%d run outcome(s) could not be recorded before shutdown", self._outcome_writes.pending)
            self._outcome_writes.cancel_all()

    # -- internals -------------------------------------------------------------------------

    def _app_lock(self, app_id: str) -> asyncio.Lock:
        # Starts and deletes on one app are serialised; unused locks disappear by themselves.
        return self._app_locks.setdefault(app_id, asyncio.Lock())

    def _check_user_capacity(self, request: RunRequest) -> None:
        """At most max_active_per_user runs of one user at once; a run that replaces its app's
        active run takes that run's place."""
        limit = self._max_active_per_user
        if limit <= 0:
            return
        active = self._active_by_user[request.user_id]
        replaced = request.app_id is not None and request.app_id in self._active_by_app
        if active - replaced >= limit:
            raise TooManyRequests(
                f"at most {limit} runs at once per user: stop one, or wait for one to end",
                code="too_many_runs",
                retry_after_s=1.0,
            )

    def _reserve(self, run_id: str) -> None:
        # A rejected run still ending keeps its id too: its task must end before the id is free.
        if run_id in self._reserved or run_id in self._active or run_id in self._finished or run_id in self._rejected:
            raise Conflict(f"run id {run_id!r} is already used", code="run_id_taken")
        self._reserved.add(run_id)

    async def _make_room(self, app_id: str, multitask: Multitask) -> None:
        old = self._active_by_app.get(app_id)
        if old is None:
            return
        if multitask is Multitask.REJECT and not old.gate.closed:
            raise Conflict(f"app {app_id} already has an active run {old.id}", code="run_active")
        old.cancel(StopReason.SUPERSEDED)
        # Wait for the old task to be gone: its upstream is closed and nothing of it can
        # touch the workspace while the new run works there.
        await old.wait_finished()

    async def _create_and_launch(self, request: RunRequest) -> Run:
        run = Run(request, encode=self._encode)
        run.metrics = self.metrics
        run.log.limit_bytes(self._retention.max_live_run_bytes)
        # Findable before the first await: a stop during the insert closes the gate, and
        # the task then records the interruption on its first line.
        self._active[run.id] = run
        self._active_by_user[run.user_id] += 1
        if run.app_id is not None:
            self._active_by_app[run.app_id] = run
        pending = self._pending_stops.take(run.user_id, run.id)
        if pending is not None:  # its stop came first: it ends interrupted before doing anything
            run.cancel(StopReason.USER_STOP, pending)
        job = request.job or self._job
        # Several workers: a stop from another worker finds a run by its row, so the row comes first.
        if request.deferred_insert and self._peers is None:
            return self._launch_then_insert(run, job)
        try:
            await self._store.insert_run(run)
        except BaseException:
            self._forget(run)
            raise
        self._launch(run, job, self._store)
        return run

    def _launch_then_insert(self, run: Run, job: Job) -> Run:
        """Start the run now and write its row once it has sent its first output.

        A /v1 request's time to first byte must not include the insert: measured here, one
        insert costs ~1 ms of event-loop CPU (SQLAlchemy's async session, the driver's thread
        hand-offs) against a 2 ms budget for the whole proxy. So the run goes first, and the
        row follows once the run's first output (its first chunk, or its end) is in the log.
        The run records its outcome only after that. If the insert fails (an id used by a run
        no longer in memory, the database down), the run is stopped with reason ``rejected``
        and the error kept on it (``run.rejection``) for its caller to answer with; nothing of
        it stays findable here.
        """
        recorder = RecordAfterInsert(self._store)
        self._launch(run, job, recorder)
        insert = asyncio.create_task(self._insert_after_first_event(run, recorder), name=f"insert:{run.id}")
        self._tasks.add(insert)
        insert.add_done_callback(self._tasks.discard)
        return run

    async def _insert_after_first_event(self, run: Run, recorder: RecordAfterInsert) -> None:
        try:
            await first_output(run)
            await asyncio.sleep(0)  # the followers woken by the same event send it first
            await recorder.insert(run)
        except AppError as exc:
            self._reject(run, exc)
        except Exception:
            log.exception("could not write the run's row", extra={"run_id": run.id})
            self._reject(run, ServiceUnavailable("the request could not be recorded; try again", code="persist_failed"))
        finally:
            recorder.give_up()  # cancelled (shutdown) before the insert: the run must still end

    def _reject(self, run: Run, error: AppError) -> None:
        run.rejection = error
        run.cancel(StopReason.REJECTED)
        self._forget(run)
        if self._finished.get(run.id) is run:
            self._finished.discard(run.id, run)  # its task has ended already
        else:
            self._rejected[run.id] = run  # still ending: _on_done must not retain it either

    def _launch(self, run: Run, job: Job, recorder: RunRecorder) -> None:
        if self._closing:
            run.cancel(StopReason.SHUTDOWN)
        task = run.start(job, RetryOutcome(recorder, self._outcome_writes.later))
        self.metrics.runs_started.inc(run.kind.value)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._on_done(run, t))
        if self._peers is not None:
            self._peers.launched(run)

    def _forget(self, run: Run) -> None:
        # By identity: an id can belong to another run by now (a rejected run's, reused).
        if self._active.get(run.id) is run:
            del self._active[run.id]
            self._active_by_user[run.user_id] -= 1
            if not self._active_by_user[run.user_id]:
                del self._active_by_user[run.user_id]
        if run.app_id is not None and self._active_by_app.get(run.app_id) is run:
            del self._active_by_app[run.app_id]

    def _on_done(self, run: Run, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._forget(run)
        self._count_finished(run)
        if self._rejected.get(run.id) is run:
            del self._rejected[run.id]
            return
        self._finished.keep(run)

    def _count_finished(self, run: Run) -> None:
        metrics, stats = self.metrics, run.stats
        if run.status is RunStatus.FAILED:
            code = run.error.code if run.error is not None else "internal"
            reason = code
            if code.startswith("upstream"):
                metrics.upstream_errors.inc(code)
        else:
            reason = run.stop_reason.value if run.stop_reason is not None else (run.finish_reason or "")
        metrics.runs_finished.inc(run.kind.value, run.status.value, reason)
        if stats.executed:
            metrics.tool_calls.inc("executed", amount=stats.executed)
        if stats.skipped:
            metrics.tool_calls.inc("skipped", amount=stats.skipped)
