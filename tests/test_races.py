"""Races around starting, stopping, deleting and shutting down, at the run manager.

A real SQLite database; the only seam is an insert that waits on an event, which holds a race
window open so each ordering is reproduced deterministically instead of by luck.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from app.control.cancel import StopMode, StopReason
from app.control.manager import RunManager
from app.control.outcomes import Completion, RunFailed
from app.control.request import Multitask, RunRequest
from app.control.run import CancelOutcome, Run, RunStatus
from app.errors import Conflict
from app.store.db import Database
from app.store.repo import Apps, Runs, Users
from app.wire.sse import encode_event


class HeldInsert(Runs):
    """Runs whose insert_run waits until released, to open the insert -> launch window."""

    def __init__(self, db: Database) -> None:
        super().__init__(db)
        self.hold = False
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def insert_run(self, run: Run) -> None:
        if self.hold:
            self.entered.set()
            await self.release.wait()
        await super().insert_run(run)


async def until_stopped(run: Run) -> Completion:
    await asyncio.Event().wait()  # works until it is cancelled
    raise AssertionError("unreachable")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'races.db'}")
    await database.create_schema()
    yield database
    await database.dispose()


@pytest.fixture
async def owner_and_apps(db: Database) -> tuple[str, str, str]:
    user, _ = await Users(db).create("owner")
    apps = Apps(db)
    first = await apps.create(user.id, "first", "html", None)
    second = await apps.create(user.id, "second", "html", None)
    return user.id, first.id, second.id


@pytest.fixture
def store(db: Database) -> HeldInsert:
    return HeldInsert(db)


@pytest.fixture
def manager(store: HeldInsert) -> RunManager:
    """A manager whose runs work until stopped, over the held-insert store."""
    return RunManager(store, until_stopped, encode=encode_event)


def request(run_id: str, app_id: str, user_id: str, tmp_path: Path, **kw: Multitask) -> RunRequest:
    return RunRequest(run_id, app_id, user_id, "hello", tmp_path / app_id, **kw)


async def test_a_stop_during_the_insert_is_not_lost(
    store: HeldInsert, manager: RunManager, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    user, app, _ = owner_and_apps
    store.hold = True
    starting = asyncio.create_task(manager.start(request("r1", app, user, tmp_path)))
    await store.entered.wait()
    run = manager.get("r1")
    assert run is not None, "a run being created must already be findable by a stop"
    assert run.cancel(StopReason.USER_STOP) is CancelOutcome.STOPPING
    store.release.set()
    run = await starting
    await run.wait_finished()
    assert run.status is RunStatus.INTERRUPTED
    row = await store.get("r1")
    assert row is not None
    assert (row.status, row.stop_reason) == ("interrupted", "user_stop")


async def test_a_remembered_stop_ends_its_start_before_the_job_runs(
    store: HeldInsert, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    """The stop came before the start (app/control/pending_stops.py): the run is made stopped."""
    called: list[str] = []

    async def job(run: Run) -> Completion:
        called.append(run.id)
        return await until_stopped(run)

    manager = RunManager(store, job, encode=encode_event)
    user, app, _ = owner_and_apps
    manager.remember_stop("someone else", "r-early", StopMode.IMMEDIATE)
    manager.remember_stop(user, "r-early", StopMode.ROLLBACK)
    run = await manager.start(request("r-early", app, user, tmp_path))
    await run.wait_finished()
    assert (run.status, run.stop_reason, run.stop_mode) == (
        RunStatus.INTERRUPTED,
        StopReason.USER_STOP,
        StopMode.ROLLBACK,
    )
    assert called == []  # nothing of the run ran: no upstream request, no tool, no build
    row = await store.get("r-early")
    assert row is not None
    assert (row.status, row.stop_reason) == ("interrupted", "user_stop")


async def test_shutdown_waits_for_a_run_still_being_started(
    store: HeldInsert, manager: RunManager, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    user, app, _ = owner_and_apps
    store.hold = True
    starting = asyncio.create_task(manager.start(request("r2", app, user, tmp_path)))
    await store.entered.wait()
    shutting_down = asyncio.create_task(manager.shutdown(grace_s=10))
    run = manager.get("r2")
    assert run is not None
    await asyncio.sleep(0)  # shutdown runs up to its first await: it has cancelled every run it knows
    assert run.gate.closed
    assert not shutting_down.done(), "shutdown returned while a run was still being started"
    store.release.set()
    await asyncio.wait_for(shutting_down, 10)
    assert (await starting).status is RunStatus.INTERRUPTED
    row = await store.get("r2")
    assert row is not None
    assert (row.status, row.stop_reason) == ("interrupted", "shutdown")
    assert manager.active_count == manager.task_count == 0


async def test_delete_waits_for_a_start_in_progress_then_stops_it(
    store: HeldInsert, manager: RunManager, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    user, app, _ = owner_and_apps
    first = await manager.start(request("old", app, user, tmp_path))
    store.hold = True
    superseding = asyncio.create_task(manager.start(request("new", app, user, tmp_path)))
    await store.entered.wait()
    deleted: list[str] = []

    async def delete() -> None:
        deleted.append(app)

    deleting = asyncio.create_task(manager.delete_app(app, delete))
    store.release.set()
    new = await superseding
    await asyncio.wait_for(deleting, 5)
    assert first.stop_reason is StopReason.SUPERSEDED
    assert new.finished
    assert new.stop_reason is StopReason.USER_STOP
    assert deleted == [app]
    assert manager.active_for_app(app) is None


async def test_one_run_id_claimed_by_two_apps_at_once_is_a_conflict_not_a_crash(
    store: HeldInsert, manager: RunManager, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    user, app_a, app_b = owner_and_apps
    store.hold = True
    first = asyncio.create_task(manager.start(request("same", app_a, user, tmp_path)))
    await store.entered.wait()
    with pytest.raises(Conflict) as conflict:
        await manager.start(request("same", app_b, user, tmp_path))
    assert conflict.value.code == "run_id_taken"
    store.release.set()
    run = await first
    run.cancel(StopReason.USER_STOP)
    await run.wait_finished()


async def test_reject_does_not_refuse_a_start_right_after_a_stop(
    db: Database, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    user, app, _ = owner_and_apps
    manager = RunManager(Runs(db), until_stopped, encode=encode_event)
    old = await manager.start(request("a", app, user, tmp_path))
    old.cancel(StopReason.USER_STOP)  # stopping; its record may not be written yet
    new = await manager.start(request("b", app, user, tmp_path, multitask=Multitask.REJECT))
    assert old.finished
    new.cancel(StopReason.USER_STOP)
    await new.wait_finished()


async def test_an_error_while_a_stop_unwinds_keeps_the_run_interrupted(
    db: Database, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    user, app, _ = owner_and_apps

    async def fails_on_cancel(run: Run) -> Completion:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            raise RunFailed("upstream_unavailable", "closing the upstream failed") from None
        raise AssertionError("unreachable")

    runs = Runs(db)
    manager = RunManager(runs, fails_on_cancel, encode=encode_event)
    run = await manager.start(request("r3", app, user, tmp_path))
    await asyncio.sleep(0)  # let the task start and suspend
    run.cancel(StopReason.USER_STOP)
    await run.wait_finished()
    assert run.status is RunStatus.INTERRUPTED
    row = await runs.get("r3")
    assert row is not None
    assert (row.status, row.error_code) == ("interrupted", None)


async def test_a_run_cancelled_by_something_else_still_ends_its_stream(
    db: Database, owner_and_apps: tuple[str, str, str], tmp_path: Path
) -> None:
    user, app, _ = owner_and_apps
    runs = Runs(db)
    manager = RunManager(runs, until_stopped, encode=encode_event)
    run = await manager.start(request("r4", app, user, tmp_path))
    await asyncio.sleep(0)
    (task,) = [t for t in asyncio.all_tasks() if t.get_name() == "run:r4"]
    task.cancel()  # not a stop: e.g. a hard cancel at the end of a shutdown grace
    kinds = [event.kind async for batch in run.log.follow() for event in batch]
    assert kinds == ["run", "failed"]
    await run.wait_finished()
    row = await runs.get("r4")
    assert row is not None
    assert (row.status, row.error_code) == ("failed", "internal")
