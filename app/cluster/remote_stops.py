"""Stopping a run another worker holds: the cluster's side of run control (``StopPeers``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from app.cluster.stops import FORBIDDEN
from app.control.cancel import StopMode, StopReason
from app.control.run import ACTIVE_STATUSES, CancelOutcome
from app.errors import Forbidden
from app.runs.access import check_run_owner
from app.runs.results import RemoteStop
from app.store.repo import Runs

if TYPE_CHECKING:
    from app.cluster.node import Cluster


class RemoteStops:
    def __init__(self, cluster: Cluster, runs: Runs) -> None:
        self._cluster = cluster
        self._runs = runs

    async def stop_elsewhere(self, run_id: str, user_id: str, reason: StopReason, mode: StopMode) -> RemoteStop | None:
        """Stop a run held by another worker, as ``user_id``. Raises Forbidden for another user's run.

        None: no other worker runs it, so the caller answers from the row. The owner's answer
        comes over Redis in about a millisecond; without one (its subscriber is reconnecting,
        Redis is down) the stop is written into the row, where the owner finds it.
        """
        cluster = self._cluster
        reply = await cluster.stop_remote(run_id, user_id, reason, mode)
        if reply is not None:
            if reply.outcome == FORBIDDEN:
                raise Forbidden(f"run {run_id!r} belongs to another user")
            return RemoteStop(CancelOutcome(reply.outcome), reply.status, reply.mode)
        row = await self._runs.get(run_id)
        if row is None or row.status not in ACTIVE_STATUSES or row.owner_worker == cluster.worker_id:
            return None
        check_run_owner(row.user_id, user_id, run_id)
        recorded = await cluster.request_stop(run_id, reason, mode)
        outcome = CancelOutcome.STOPPING if recorded else CancelOutcome.ALREADY_STOPPING
        return RemoteStop(outcome, "stopping", mode.value)

    async def wait_ended(self, run_id: str, timeout_s: float) -> bool:
        return await self._cluster.wait_ended(run_id, timeout_s)
