"""What run control takes and answers, free of any transport's shape."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from app.control.cancel import StopMode, StopReason
from app.control.request import Multitask, OnDisconnect
from app.control.run import CancelOutcome


@dataclass(frozen=True, slots=True)
class CodeRunSpec:
    """A code run asked for: a message to an app's agent."""

    app_id: str
    message: str
    on_disconnect: OnDisconnect = OnDisconnect.CANCEL
    multitask: Multitask = Multitask.INTERRUPT


class StopState(StrEnum):
    PENDING = "pending"  # no run has the id yet: the user's start with it is stopped as it is made
    STOPPING = "stopping"  # the stop is on its way (or the run had ended): the end was not awaited
    ENDED = "ended"  # awaited: ``status`` is the run's final status


@dataclass(frozen=True, slots=True)
class StopResult:
    run_id: str
    state: StopState
    status: str  # the run's status as far as this answer knows it ("pending" for a pending stop)
    took_effect: bool  # this stop is the one that stops the run (else it had ended or was stopping)
    mode: str | None  # the run's stop mode; None when answered from its row alone
    rolled_back: bool = False


@dataclass(frozen=True, slots=True)
class RemoteStop:
    """What the owner did with the stop: the outcome ``Run.cancel()`` gave there, the run's
    status after it, and the stop's mode. ``status`` is ``stopping`` when no owner answered and
    the stop was recorded in the run's row, for its owner to find."""

    outcome: CancelOutcome
    status: str
    mode: str

    @property
    def stopping(self) -> bool:
        return self.outcome in (CancelOutcome.STOPPING, CancelOutcome.DEFERRED)


class StopPeers(Protocol):
    """The other workers sharing the database (app/cluster); None in a single process."""

    async def stop_elsewhere(self, run_id: str, user_id: str, reason: StopReason, mode: StopMode) -> RemoteStop | None:
        """Stop a run another worker holds (Forbidden for another user's); None: no other worker does."""

    async def wait_ended(self, run_id: str, timeout_s: float) -> bool:
        """Until the run's row has a final status (True), or the timeout (False)."""
