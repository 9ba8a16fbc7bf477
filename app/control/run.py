"""A run: one agent turn as its own asyncio task, with an event log and a synchronous cancel().

How a stop works (see docs/design.md):

1. ``Run.cancel(reason)`` runs on the event loop, synchronously. It closes the stop gate
   (after which no tool side effect can commit, even from a worker thread), appends the
   terminal ``interrupted`` event (after which the log accepts nothing), and cancels the task.
2. Subscribers waiting on the log wake at once and send ``interrupted`` as their last event.
3. The task gets ``CancelledError`` at its current ``await``: leaving the agent's
   ``async with`` closes the upstream LLM response, so the provider sees the disconnect.
4. The task records the interruption in the database and sets ``finished``.

A run only commits its turn to chat history on completion, so nothing truncated is persisted.
"""

from __future__ import annotations

import asyncio
import io
import logging
import re
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from app.clock import utcnow
from app.control.cancel import RunCancelled, StopGate, StopMode, StopReason, uncancel_current_task
from app.control.event_log import EventEncoder, EventLog
from app.control.events import (
    Done,
    Failed,
    Interrupted,
    RunEvent,
    RunStarted,
    TextDelta,
)
from app.control.outcomes import Completion, Published, RunFailed
from app.control.request import Job, RunRequest
from app.control.stats import RunStats
from app.errors import AppError
from app.logs import bind
from app.metrics import Metrics

log = logging.getLogger(__name__)

# What a client-chosen run id may look like (it appears in URLs, headers and SSE ids).
RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    # The agent has finished; the turn is being written to history. Too late to stop.
    COMPLETING = "completing"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"
    FAILED = "failed"


FINAL_STATUSES = frozenset({RunStatus.COMPLETED, RunStatus.INTERRUPTED, RunStatus.FAILED})
# A row in one of these is a run some worker still owns (completing is never written to a row).
ACTIVE_STATUSES = frozenset({RunStatus.QUEUED.value, RunStatus.RUNNING.value})


class CancelOutcome(StrEnum):
    STOPPING = "stopping"  # this call stopped the run
    DEFERRED = "deferred"  # after_step: the run stops once the tool call in progress has finished
    ALREADY_STOPPING = "already_stopping"  # an earlier stop did
    TOO_LATE = "too_late"  # the run is completing or already over


class RunRecorder(Protocol):
    """Where a run records itself (the database)."""

    async def record_completed(self, run: Run) -> None: ...
    async def record_interrupted(self, run: Run) -> None: ...
    async def record_failed(self, run: Run) -> None: ...


class Run:
    def __init__(self, request: RunRequest, *, encode: EventEncoder) -> None:
        self.request = request
        # Read in every lookup and by every tool call: plain attributes, not properties of the request.
        self.id = request.run_id
        self.kind = request.kind
        self.app_id = request.app_id
        self.user_id = request.user_id
        self.message = request.message
        self.code_gen_type = request.code_gen_type
        self.on_disconnect = request.on_disconnect
        self._workspace = request.workspace
        self.status = RunStatus.QUEUED
        self.gate = StopGate()
        self.log = EventLog(request.run_id, encode)
        self.stats = RunStats()
        # The answer so far, for the history: a buffer, not a list of deltas (2M small str objects).
        self._reply = io.StringIO()
        self.created_at = utcnow()
        self.started_at: datetime | None = None
        self.stop_requested_at: datetime | None = None
        # Monotonic instant the stop was accepted, for latency measurements.
        self.stop_requested_mono: float | None = None
        self.ended_at: datetime | None = None
        self.finish_reason: str | None = None
        self.error: Failed | None = None
        self.published: Published | None = None
        self.stop_mode = StopMode.IMMEDIATE
        # Set by the agent once it knows the checkpoint the run started from.
        self.rollback: Callable[[], Awaitable[None]] | None = None
        self.rolled_back = False
        # Why the manager refused the run after starting it (reason REJECTED), for its caller.
        self.rejection: AppError | None = None
        # True while a tool call executes: an after_step stop waits for it.
        self.tool_in_progress = False
        self._deferred_stop: StopReason | None = None
        self._task: asyncio.Task[None] | None = None
        # Where the stop latencies of this run are counted (set by the run manager).
        self.metrics: Metrics | None = None
        self._started = False
        self._finished = asyncio.Event()
        self.emit(RunStarted(self.app_id))

    # -- observing -------------------------------------------------------------------------

    @property
    def stop_reason(self) -> StopReason | None:
        return self.gate.reason

    @property
    def finished(self) -> bool:
        """True once the task has ended: its terminal event is in the log and its outcome was
        written (or the write failed and was logged)."""
        return self._finished.is_set()

    @property
    def code_app_id(self) -> str:
        """The app a code run works on (chat runs have none)."""
        if self.app_id is None:
            raise RunFailed("internal", f"run {self.id} has no app")
        return self.app_id

    @property
    def workspace(self) -> Path:
        if self._workspace is None:
            raise RunFailed("internal", f"run {self.id} has no workspace")
        return self._workspace

    @property
    def reply_text(self) -> str:
        return self._reply.getvalue()

    async def wait_finished(self) -> None:
        await self._finished.wait()

    def note_upstream_closed(self) -> None:
        """The run's upstream response has just been closed: after a stop, that is its latency."""
        if self.metrics is not None and self.gate.closed:
            self.metrics.observe_since(self.metrics.stop_to_upstream_closed, self.stop_requested_mono)

    def note_interrupted_sent(self) -> None:
        """A client's stream has just been handed the run's `interrupted` event."""
        if self.metrics is not None:
            self.metrics.observe_since(self.metrics.stop_to_interrupted, self.stop_requested_mono)

    # -- emitting (called by the agent) ----------------------------------------------------

    def emit(self, event: RunEvent) -> None:
        self.log.append(event)

    def emit_text(self, text: str) -> None:
        if self.log.append(TextDelta(text)):
            self._reply.write(text)

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, job: Job, recorder: RunRecorder) -> asyncio.Task[None]:
        if self.status is RunStatus.QUEUED:
            self.status = RunStatus.RUNNING
        self.started_at = utcnow()
        self._task = asyncio.create_task(self._drive(job, recorder), name=f"run:{self.id}")
        return self._task

    def cancel(self, reason: StopReason, mode: StopMode = StopMode.IMMEDIATE) -> CancelOutcome:
        """Stop the run. Synchronous, so nothing of the run can interleave with it.

        ``after_step`` while a tool call executes only marks the stop: the loop honours it as
        soon as that call has finished (:meth:`honour_deferred_stop`). Every other stop, and
        ``after_step`` at any other moment, takes effect now.
        """
        if self.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
            return CancelOutcome.ALREADY_STOPPING if self.gate.closed else CancelOutcome.TOO_LATE
        if mode is StopMode.AFTER_STEP and self.tool_in_progress:
            if self._deferred_stop is not None:
                return CancelOutcome.ALREADY_STOPPING
            self._deferred_stop = reason
            self.stop_mode = mode
            self._note_stop_requested()
            log.info("run stopping after this tool call", extra={"run_id": self.id})
            return CancelOutcome.DEFERRED
        return self._stop_now(reason, mode)

    def honour_deferred_stop(self) -> None:
        """Called by the loop after each tool call: an after_step stop takes effect here."""
        if self._deferred_stop is not None:
            self._stop_now(self._deferred_stop, StopMode.AFTER_STEP)
        self.gate.check()

    def _stop_now(self, reason: StopReason, mode: StopMode) -> CancelOutcome:
        if not self.gate.close(reason):
            return CancelOutcome.ALREADY_STOPPING
        self.stop_mode = mode
        self._note_stop_requested()
        self.status = RunStatus.INTERRUPTED
        self.emit(Interrupted(reason, mode.value))
        # A task that has not started yet is not cancelled: its first step sees the closed
        # gate and records the interruption itself (a never-started coroutine runs no code).
        # Nor is the run's own task when it stops itself (after_step): it raises RunCancelled.
        if self._task is not None and self._started and self._task is not asyncio.current_task():
            self._task.cancel()
        log.info("run stopping", extra={"run_id": self.id, "reason": reason.value, "mode": mode.value})
        return CancelOutcome.STOPPING

    def _note_stop_requested(self) -> None:
        # The first request counts: a deferred after_step stop was asked for before it took effect.
        if self.stop_requested_at is None:
            self.stop_requested_mono = time.monotonic()
            self.stop_requested_at = utcnow()

    async def _drive(self, job: Job, recorder: RunRecorder) -> None:
        self._started = True
        bind(run_id=self.id, app_id=self.app_id, user_id=self.user_id)  # this task's log lines
        try:
            await self._run_job(job, recorder)
        finally:
            if not self.log.closed:
                # Every exit path ends the log (a cancellation that was not a stop, a crash in
                # the save, loop teardown): followers must never wait forever.
                await self._end_unexpectedly(recorder)
            self.ended_at = self.ended_at or utcnow()
            self._finished.set()

    async def _run_job(self, job: Job, recorder: RunRecorder) -> None:
        try:
            self.gate.check()
            completion = await job(self)
        except asyncio.CancelledError:
            if not self.gate.closed:
                raise  # not a stop of ours: _drive still ends the log
            uncancel_current_task()  # our own stop, handled here: the task ends normally
            await self._interrupted(recorder)
        except RunCancelled:
            await self._interrupted(recorder)
        except RunFailed as exc:
            await self._fail(recorder, exc.code, exc.message)
        except Exception:
            log.exception("run crashed", extra={"run_id": self.id})
            await self._fail(recorder, "internal", "internal error in the run")
        else:
            if self.gate.closed:  # stopped while finishing: a stopped run never saves its turn
                await self._interrupted(recorder)
            else:
                await self._complete(completion, recorder)

    async def _interrupted(self, recorder: RunRecorder) -> None:
        if self.stop_mode is StopMode.ROLLBACK and self.rollback is not None:
            # Every side effect of the run has ended (tool threads and builds are awaited
            # on cancellation), so the restore cannot race a write of this run.
            try:
                await self.rollback()
                self.rolled_back = True
            except Exception:
                log.exception("rollback failed", extra={"run_id": self.id})
        await self._record(recorder.record_interrupted)

    async def _complete(self, completion: Completion, recorder: RunRecorder) -> None:
        # Past this line a stop is too late: the completion's side effects happen together.
        self.status = RunStatus.COMPLETING
        self.finish_reason = completion.finish_reason
        published = Published()
        if completion.finalize is not None:
            try:
                published = await completion.finalize()
            except RunFailed as exc:
                await self._fail(recorder, exc.code, exc.message)
                return
            except Exception:
                log.exception("could not finalize completed run", extra={"run_id": self.id})
                await self._undo_partial_finalize()
                await self._fail(recorder, "finalize_failed", "the run's results could not be written")
                return
        self.published = published
        self.ended_at = utcnow()
        try:
            await recorder.record_completed(self)
        except Exception:
            log.exception("could not record completed run", extra={"run_id": self.id})
            await self._undo_partial_finalize()  # an unsaved turn leaves no files behind either
            await self._fail(recorder, "persist_failed", "the turn could not be saved")
            return
        self.status = RunStatus.COMPLETED
        stats = self.stats
        done = Done(
            completion.finish_reason,
            stats.steps,
            stats.executed,
            published.files,
            published.preview_url,
            published.checkpoint,
        )
        self.emit(done)

    async def _undo_partial_finalize(self) -> None:
        """A failed run must not leave half of its results: back to the run's starting point."""
        if self.rollback is None:
            return
        try:
            await self.rollback()
        except Exception:
            log.exception("could not undo a partial finalize", extra={"run_id": self.id})

    async def _fail(self, recorder: RunRecorder, code: str, message: str) -> None:
        if self.gate.closed:
            # An error while a stop unwinds (e.g. closing the upstream) does not turn the
            # interrupted run, whose stream already said `interrupted`, into a failed one
            # (and a rollback stop still rolls back).
            await self._interrupted(recorder)
            return
        self.status = RunStatus.FAILED
        self.error = Failed(code, message)
        self.ended_at = utcnow()
        self.emit(self.error)
        await self._record(recorder.record_failed)

    async def _end_unexpectedly(self, recorder: RunRecorder) -> None:
        log.error("run ended without an outcome", extra={"run_id": self.id})
        self.status = RunStatus.FAILED
        self.error = Failed("internal", "the run ended unexpectedly")
        self.emit(self.error)
        await self._record(recorder.record_failed)

    async def _record(self, write: Callable[[Run], Awaitable[None]]) -> None:
        """Write a final state; a failing database must not keep the run from ending."""
        self.ended_at = self.ended_at or utcnow()
        try:
            await write(self)
        except Exception:
            log.exception("could not record run outcome", extra={"run_id": self.id})
