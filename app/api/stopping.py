"""Stopping a run this worker does not hold: through the worker that does (several workers)."""

from __future__ import annotations

from dataclasses import dataclass

from app.api.deps import check_run_owner
from app.api.sse import ACTIVE_STATUSES
from app.cluster.stops import FORBIDDEN
from app.control.cancel import StopMode, StopReason
from app.control.run import CancelOutcome
from app.errors import Forbidden
from app.services import Services
from app.store.models import User


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


async def stop_elsewhere(
    services: Services, user: User, run_id: str, reason: StopReason, mode: StopMode
) -> RemoteStop | None:
    """Stop a run held by another worker, as ``user``. Raises Forbidden for another user's run.

    None: no other worker runs it (always, in one process), so the caller answers from the row.
    The owner's answer comes over Redis in about a millisecond; without one (its subscriber is
    reconnecting, Redis is down) the stop is written into the row, where the owner finds it.
    """
    cluster = services.cluster
    if cluster is None:
        return None
    reply = await cluster.stop_remote(run_id, user.id, reason, mode)
    if reply is not None:
        if reply.outcome == FORBIDDEN:
            raise Forbidden(f"run {run_id!r} belongs to another user")
        return RemoteStop(CancelOutcome(reply.outcome), reply.status, reply.mode)
    row = await services.runs.get(run_id)
    if row is None or row.status not in ACTIVE_STATUSES or row.owner_worker == cluster.worker_id:
        return None
    check_run_owner(row.user_id, user, run_id)
    recorded = await cluster.request_stop(run_id, reason, mode)
    return RemoteStop(CancelOutcome.STOPPING if recorded else CancelOutcome.ALREADY_STOPPING, "stopping", mode.value)
