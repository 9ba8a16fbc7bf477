"""How a run's row follows the run: its outcome written (and retried while the database refuses
it), and, for a chat run, its row inserted only after its first output."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from app.control.run import Run, RunRecorder

if TYPE_CHECKING:
    from app.control.manager import RunStore

log = logging.getLogger(__name__)

Write = Callable[[Run], Awaitable[None]]

# An outcome the database refused (down, or locked past its busy timeout) is written again in
# the background, every 0.05 s growing to every 2 s, for this long; then the next start's
# sweep (server_restart) or the cluster's (outcome_lost) is what ends the row.
OUTCOME_RETRY_FOR_S = 600.0
OUTCOME_RETRY_FIRST_S = 0.05
OUTCOME_RETRY_CAP_S = 2.0


class OutcomeRetries:
    """Outcome writes the database refused, tried again in the background until it takes them."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def later(self, run: Run, write: Write) -> None:
        task = asyncio.create_task(self._retry_write(run, write), name=f"record:{run.id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def cancel_all(self) -> None:
        for task in set(self._tasks):
            task.cancel()

    async def _retry_write(self, run: Run, write: Write) -> None:
        delay = OUTCOME_RETRY_FIRST_S
        deadline = time.monotonic() + OUTCOME_RETRY_FOR_S
        while time.monotonic() < deadline:
            await asyncio.sleep(delay)
            delay = min(delay * 2, OUTCOME_RETRY_CAP_S)
            try:
                await write(run)
            except Exception:
                continue  # logged when it first failed; the database is still refusing
            log.info("run outcome recorded after the database came back", extra={"run_id": run.id})
            return
        log.error("gave up recording the run's outcome", extra={"run_id": run.id})


async def first_output(run: Run) -> None:
    """Until the run has logged something a client receives (text, a relayed chunk, its end)."""
    async with contextlib.aclosing(run.log.follow(after_seq=1)) as batches:
        async for batch in batches:
            if any(event.wire or event.relay for event in batch):
                return


class RetryOutcome:
    """A run's recorder whose refused outcome writes are tried again in the background.

    The run ends when it ends (its stream said so, a new run on its app is waiting for it), so
    it cannot wait for the database; but its row must not stay ``running`` because the database
    was down or locked at that instant. A completion is not retried: its failure to save is the
    run's failure (``persist_failed``), and that outcome is the one retried.
    """

    def __init__(self, recorder: RunRecorder, later: Callable[[Run, Write], None]) -> None:
        self._recorder = recorder
        self._later = later

    async def record_completed(self, run: Run) -> None:
        await self._recorder.record_completed(run)

    async def record_interrupted(self, run: Run) -> None:
        await self._write_or_retry(run, self._recorder.record_interrupted)

    async def record_failed(self, run: Run) -> None:
        await self._write_or_retry(run, self._recorder.record_failed)

    async def _write_or_retry(self, run: Run, write: Write) -> None:
        try:
            await write(run)
        except Exception:
            log.exception("could not record run outcome; retrying in the background", extra={"run_id": run.id})
            self._later(run, write)


class RecordAfterInsert:
    """A run's recorder that writes its outcome only once its row exists (none if it never will)."""

    def __init__(self, store: RunStore) -> None:
        self._store = store
        self._inserted: asyncio.Future[bool] = asyncio.get_running_loop().create_future()

    async def insert(self, run: Run) -> None:
        try:
            await self._store.insert_run(run)
        except BaseException:
            self.give_up()
            raise
        self._inserted.set_result(True)

    def give_up(self) -> None:
        """No row will be written: outcomes are not recorded (a no-op once settled)."""
        if not self._inserted.done():
            self._inserted.set_result(False)

    async def _row_exists(self) -> bool:
        return await asyncio.shield(self._inserted)

    async def record_completed(self, run: Run) -> None:
        if not await self._row_exists():
            # The caller was told the run failed to start; its turn must not look saved.
            raise RuntimeError(f"run {run.id} has no row to record its completion in")
        await self._store.record_completed(run)

    async def record_interrupted(self, run: Run) -> None:
        if await self._row_exists():
            await self._store.record_interrupted(run)

    async def record_failed(self, run: Run) -> None:
        if await self._row_exists():
            await self._store.record_failed(run)
