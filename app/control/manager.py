"""The run manager: owns every run task of this process, one active run per app.

Handlers never touch tasks; they ask the manager to start, find or stop runs. Finished
runs stay in memory for ``retain_s`` so late joiners can replay their events.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Protocol

from app.control.cancel import StopReason
from app.control.run import CancelOutcome, Job, OnDisconnect, Run, RunRecorder
from app.errors import Conflict

log = logging.getLogger(__name__)


class Multitask(StrEnum):
    """What to do when an app already has an active run."""

    INTERRUPT = "interrupt"  # stop the old run (reason superseded), then start
    REJECT = "reject"  # answer 409


@dataclass(frozen=True, slots=True)
class RunRequest:
    run_id: str
    app_id: str
    user_id: str
    message: str
    workspace: Path
    on_disconnect: OnDisconnect = OnDisconnect.CANCEL
    multitask: Multitask = Multitask.INTERRUPT


class RunStore(RunRecorder, Protocol):
    """What the manager needs from the database besides recording outcomes."""

    async def run_exists(self, run_id: str) -> bool: ...
    async def insert_run(self, run: Run) -> None: ...


class RunManager:
    def __init__(self, store: RunStore, job: Job, *, retain_s: float = 600.0) -> None:
        self._store = store
        self._job = job
        self._retain_s = retain_s
        self._active: dict[str, Run] = {}  # run id -> run, until its task is done
        self._active_by_app: dict[str, Run] = {}
        self._finished: OrderedDict[str, tuple[float, Run]] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        # One lock per app serialises starts on that app; unused locks disappear by themselves.
        self._app_locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._closing = False

    # -- queries ---------------------------------------------------------------------------

    def get(self, run_id: str) -> Run | None:
        self._prune()
        run = self._active.get(run_id)
        if run is not None:
            return run
        entry = self._finished.get(run_id)
        return entry[1] if entry else None

    def active_for_app(self, app_id: str) -> Run | None:
        return self._active_by_app.get(app_id)

    @property
    def active_count(self) -> int:
        return len(self._active)

    @property
    def task_count(self) -> int:
        return len(self._tasks)

    @property
    def retained_count(self) -> int:
        return len(self._finished)

    # -- commands --------------------------------------------------------------------------

    async def start(self, request: RunRequest) -> Run:
        if self._closing:
            raise Conflict("the server is shutting down", code="shutting_down")
        lock = self._app_locks.setdefault(request.app_id, asyncio.Lock())
        async with lock:
            await self._make_room(request)
            if request.run_id in self._active or request.run_id in self._finished:
                raise Conflict(f"run id {request.run_id!r} is already used", code="run_id_taken")
            if await self._store.run_exists(request.run_id):
                raise Conflict(f"run id {request.run_id!r} is already used", code="run_id_taken")
            run = Run(
                run_id=request.run_id,
                app_id=request.app_id,
                user_id=request.user_id,
                message=request.message,
                workspace=request.workspace,
                on_disconnect=request.on_disconnect,
            )
            await self._store.insert_run(run)
            self._launch(run)
        return run

    def stop(self, run: Run, reason: StopReason) -> CancelOutcome:
        return run.cancel(reason)

    async def stop_app(self, app_id: str, reason: StopReason) -> None:
        """Stop the app's active run, if any, and wait until it has ended."""
        run = self._active_by_app.get(app_id)
        if run is not None:
            run.cancel(reason)
            await run.wait_finished()

    async def shutdown(self, grace_s: float) -> None:
        """Interrupt every active run (reason shutdown) and wait for them to record it."""
        self._closing = True
        for run in list(self._active.values()):
            run.cancel(StopReason.SHUTDOWN)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace_s)
            for task in pending:
                log.warning("run task did not end within the shutdown grace", extra={"task": task.get_name()})
                task.cancel()

    # -- internals -------------------------------------------------------------------------

    async def _make_room(self, request: RunRequest) -> None:
        old = self._active_by_app.get(request.app_id)
        if old is None:
            return
        if request.multitask is Multitask.REJECT:
            raise Conflict(f"app {request.app_id} already has an active run {old.id}", code="run_active")
        old.cancel(StopReason.SUPERSEDED)
        # Wait for the old task to be gone: its upstream is closed and nothing of it can
        # touch the workspace while the new run works there.
        await old.wait_finished()

    def _launch(self, run: Run) -> None:
        self._active[run.id] = run
        self._active_by_app[run.app_id] = run
        task = run.start(self._job, self._store)
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._on_done(run, t))

    def _on_done(self, run: Run, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._active.pop(run.id, None)
        if self._active_by_app.get(run.app_id) is run:
            del self._active_by_app[run.app_id]
        self._finished[run.id] = (time.monotonic(), run)
        self._prune()

    def _prune(self) -> None:
        horizon = time.monotonic() - self._retain_s
        while self._finished:
            run_id, (finished_at, _) = next(iter(self._finished.items()))
            if finished_at > horizon:
                break
            del self._finished[run_id]
