"""The run manager when a started run's row cannot be written (chat runs insert it late).

The manager is the subject here, so its store is a small in-memory stand-in: what is tested
is what the manager does with the store's answers.
"""

from __future__ import annotations

import asyncio

import pytest

from app.control.cancel import StopReason
from app.control.manager import RunManager
from app.control.outcomes import Completion
from app.control.request import RunKind, RunRequest
from app.control.run import Run
from app.errors import Conflict
from app.wire.sse import encode_event

HANG_TIMEOUT_S = 10.0


class Store:
    """Rows by id; an id in `taken` fails its insert as an older run's id would."""

    def __init__(self, taken: set[str]) -> None:
        self.taken = taken
        self.rows: dict[str, str] = {}

    async def insert_run(self, run: Run) -> None:
        if run.id in self.taken:
            raise Conflict(f"run id {run.id!r} is already used", code="run_id_taken")
        self.rows[run.id] = "running"

    async def record_completed(self, run: Run) -> None:
        self.rows[run.id] = "completed"

    async def record_interrupted(self, run: Run) -> None:
        self.rows[run.id] = "interrupted"

    async def record_failed(self, run: Run) -> None:
        self.rows[run.id] = "failed"


def chat(run_id: str, job: object) -> RunRequest:
    return RunRequest(
        run_id=run_id,
        app_id=None,
        user_id="u",
        message="hi",
        workspace=None,
        kind=RunKind.CHAT,
        job=job,  # type: ignore[arg-type]
        deferred_insert=True,
    )


async def test_a_rejected_run_keeps_its_id_until_its_task_ends_and_never_shadows_the_next() -> None:
    store = Store(taken={"x"})
    release = asyncio.Event()

    async def slow_to_unwind(run: Run) -> Completion:
        run.emit_text("first output")  # the row is written after this
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()  # like a tool thread awaited to its end
        return Completion("stop")

    manager = RunManager(store, slow_to_unwind, encode=encode_event)
    first = await manager.start(chat("x", slow_to_unwind))
    task = next(t for t in asyncio.all_tasks() if t.get_name() == "run:x")
    async with asyncio.timeout(HANG_TIMEOUT_S):
        async for _ in first.log.follow():  # until the log closes: the rejection's `interrupted`
            pass
    assert first.rejection is not None
    assert first.stop_reason is StopReason.REJECTED
    assert first.rejection.code == "run_id_taken"
    assert manager.get("x") is None  # not findable: GET /runs/x reads the older run's row

    with pytest.raises(Conflict):  # still ending: the id is not free yet
        await manager.start(chat("x", slow_to_unwind))

    release.set()
    async with asyncio.timeout(HANG_TIMEOUT_S):
        # The manager's done callback was added first, so it has run when this wait returns.
        await asyncio.wait({task})
    assert manager.get("x") is None  # its end did not make it findable either
    assert "x" not in store.rows  # nothing recorded for it

    store.taken.clear()

    async def quick(run: Run) -> Completion:
        run.emit_text("hello")
        return Completion("stop")

    second = await manager.start(chat("x", quick))
    assert manager.get("x") is second
    async with asyncio.timeout(HANG_TIMEOUT_S):
        await second.wait_finished()  # set after the outcome was recorded
    assert store.rows["x"] == "completed"
    assert manager.get("x") is second  # retained for joins, as any finished run
