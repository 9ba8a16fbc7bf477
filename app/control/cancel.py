"""Cancellation: why a run stops, and the gate that orders a stop against side effects.

A stop has to beat three things: the event stream, the upstream LLM connection and the
tools. The stream and the upstream are handled by cancelling the run's task. Tools are
harder: file I/O runs in worker threads (to keep the event loop free), and a thread
cannot be cancelled. So every side effect commits through a :class:`StopGate`:

* ``gate.close(reason)`` is what a stop does first (on the event loop, synchronously);
* a worker thread commits (``os.replace``, ``unlink``, ``mkdir``) only inside
  ``with gate.commit():``, which holds the same lock and refuses once the gate is closed.

Both take one ``threading.Lock``, so a commit and a stop are strictly ordered: once
``close()`` has returned, no side effect of the run can land any more. A commit already
in progress when the stop arrives finishes first (creating missing directories and one
rename: microseconds) and counts as done before the stop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Iterator
from enum import StrEnum
from typing import Any, TypeVar

_T = TypeVar("_T")


class StopReason(StrEnum):
    """Why a run was interrupted; sent as ``reason`` of the ``interrupted`` event."""

    USER_STOP = "user_stop"
    CLIENT_DISCONNECT = "client_disconnect"
    SUPERSEDED = "superseded"
    SHUTDOWN = "shutdown"
    # The run could not be recorded (its id belongs to an older run): see RunManager._reject.
    REJECTED = "rejected"
    # Another worker took this one for lost and failed its runs (app/cluster): stop what is left.
    WORKER_LOST = "worker_lost"


class StopMode(StrEnum):
    """What a stop does besides ending the run (``POST /app/chat/stop {"mode": ...}``)."""

    IMMEDIATE = "immediate"  # stop now; files written so far stay (not checkpointed)
    ROLLBACK = "rollback"  # stop now, then restore the workspace to the checkpoint before the run
    AFTER_STEP = "after_step"  # let the tool call in progress finish, then stop before the next request


class RunCancelled(Exception):
    """Raised inside a run at a checkpoint once its gate is closed."""

    def __init__(self, reason: StopReason) -> None:
        super().__init__(f"run stopped: {reason.value}")
        self.reason = reason


class StopGate:
    """Thread-safe, one-way switch from "running" to "stopped" (see module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reason: StopReason | None = None
        # Called (under the lock) after each successful commit. Tools of one run execute one
        # at a time, so the run points this at the tool call that is executing.
        self.on_commit: Callable[[], None] | None = None

    @property
    def reason(self) -> StopReason | None:
        return self._reason

    @property
    def closed(self) -> bool:
        return self._reason is not None

    def close(self, reason: StopReason) -> bool:
        """Close the gate. Returns False if it was already closed (the first reason wins)."""
        with self._lock:
            if self._reason is not None:
                return False
            self._reason = reason
            return True

    def check(self) -> None:
        """Checkpoint: raise :class:`RunCancelled` if the run was stopped."""
        reason = self._reason
        if reason is not None:
            raise RunCancelled(reason)

    @contextlib.contextmanager
    def commit(self) -> Iterator[None]:
        """Hold the gate open for one side effect, or raise :class:`RunCancelled`."""
        with self._lock:
            self.check()
            yield
            if self.on_commit is not None:
                self.on_commit()


async def cancel_and_drain(task: asyncio.Task[object]) -> None:
    """Cancel ``task`` and wait until it has really finished, whatever it raises."""
    task.cancel()
    # asyncio.wait neither raises the task's exception nor swallows our own cancellation.
    await asyncio.wait({task})


async def to_thread_to_the_end(fn: Callable[..., _T], *args: Any) -> _T:
    """Run fn in a worker thread; if we are cancelled, still wait for the thread to finish.

    A thread cannot be cancelled. Its commit is refused by the stop gate, but "the run has
    ended" must also mean "nothing of it is still working in the workspace" (a new run, or a
    delete, may start there next). The wait is the rest of one file operation.
    """
    future = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        await asyncio.wait({future})
        if not future.cancelled():
            future.exception()  # mark it retrieved: the run is over, whatever the thread raised
        raise


def uncancel_current_task() -> None:
    """Undo a cancellation this task has handled itself, so it can go on (and end) normally."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
