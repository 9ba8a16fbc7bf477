"""A completed run whose results cannot all be written, or whose turn cannot be saved, fails
and leaves the workspace as it was when the run started: no half-published run.

A real SQLite database and a real checkpoint repository; the one seam is the failure itself
(a save that raises, a finalize that breaks after its first file), which is the fault injected.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from app.checkpoints import Checkpoints
from app.control.manager import RunManager
from app.control.outcomes import Completion, Published
from app.control.request import RunRequest
from app.control.run import Run, RunStatus
from app.store.db import Database
from app.store.repo import Apps, Runs, Users
from app.wire.sse import encode_event


class SaveFails(Runs):
    """The turn's transaction fails, as on a full disk or a database that went away."""

    async def record_completed(self, run: Run) -> None:
        raise OSError("disk full")


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'finalize.db'}")
    await database.create_schema()
    yield database
    await database.dispose()


@pytest.fixture
async def owner_and_app(db: Database) -> tuple[str, str]:
    user, _ = await Users(db).create("owner")
    app = await Apps(db).create(user.id, "site", "multi_file", None)
    return user.id, app.id


def job_with(checkpoints: Checkpoints, finalize_body: Callable[[Path], None]) -> Callable[[Run], Awaitable[Completion]]:
    """A run job shaped like run_codegen: baseline first, results only in finalize."""

    async def job(run: Run) -> Completion:
        base = await asyncio.to_thread(checkpoints.base, run.app_id, run.workspace, run.id)

        async def rollback() -> None:
            await asyncio.to_thread(checkpoints.restore, run.app_id, run.workspace, base)

        run.rollback = rollback

        async def finalize() -> Published:
            await asyncio.to_thread(finalize_body, run.workspace)
            return Published(("index.html", "style.css"))

        return Completion("stop", finalize=finalize)

    return job


def write_results(workspace: Path) -> None:
    (workspace / "index.html").write_text("<h1>new</h1>")
    (workspace / "style.css").write_text("h1 { color: red }")
    (workspace / "keep.txt").write_text("changed by the run")


def write_half_then_break(workspace: Path) -> None:
    (workspace / "index.html").write_text("<h1>new</h1>")
    raise OSError("no space left on device")


@pytest.mark.parametrize(
    ("store_class", "finalize_body", "code"),
    [
        pytest.param(SaveFails, write_results, "persist_failed", id="save-fails"),
        pytest.param(Runs, write_half_then_break, "finalize_failed", id="finalize-breaks"),
    ],
)
async def test_a_run_that_cannot_finish_leaves_the_workspace_as_it_found_it(
    db: Database,
    owner_and_app: tuple[str, str],
    tmp_path: Path,
    store_class: type[Runs],
    finalize_body: Callable[[Path], None],
    code: str,
) -> None:
    user_id, app_id = owner_and_app
    workspace = tmp_path / "workspaces" / app_id
    workspace.mkdir(parents=True)
    (workspace / "keep.txt").write_text("before")
    job = job_with(Checkpoints(tmp_path / "checkpoints"), finalize_body)
    manager = RunManager(store_class(db), job, encode=encode_event)

    run = await manager.start(RunRequest("r-fin", app_id, user_id, "hello", workspace))
    async with asyncio.timeout(30):
        await run.wait_finished()

    assert run.status is RunStatus.FAILED
    assert run.error is not None
    assert run.error.code == code
    assert sorted(p.name for p in workspace.iterdir()) == ["keep.txt"]
    assert (workspace / "keep.txt").read_text() == "before"
    assert await Apps(db).messages(app_id) == []
