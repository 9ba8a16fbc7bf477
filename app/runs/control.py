"""Starting and stopping runs: the one place every transport goes through."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

from app.control.cancel import StopMode, StopReason
from app.control.manager import RunManager
from app.control.request import RunKind, RunRequest
from app.control.run import CancelOutcome, Run
from app.errors import BadRequest, Forbidden, PayloadTooLarge
from app.limits import UserLimits
from app.llm.client import LLMClient
from app.proxy import ChatExchange, run_chat
from app.runs.access import check_run_owner, owned_app, without_nul
from app.runs.results import CodeRunSpec, RemoteStop, StopPeers, StopResult, StopState
from app.store.repo import Apps, Runs

# How long a rollback stop sent to another worker waits for the restore before answering.
ROLLBACK_WAIT_S = 30.0


class RunControl:
    def __init__(
        self,
        manager: RunManager,
        runs: Runs,
        apps: Apps,
        limits: UserLimits,
        llm: LLMClient,
        workspace: Callable[[str], Path],
        *,
        peers: StopPeers | None,
        max_message_chars: int,
    ) -> None:
        self._manager = manager
        self._runs = runs
        self._apps = apps
        self._limits = limits
        self._llm = llm
        self._workspace = workspace
        self._peers = peers
        self._max_message_chars = max_message_chars

    # -- starting --------------------------------------------------------------------------

    async def start_code(self, user_id: str, spec: CodeRunSpec, run_id: str) -> Run:
        """A code run on one of the user's apps (the caller checked the run id's shape)."""
        self._limits.take_start(user_id)
        message = self._checked_message(spec.message)
        app = await owned_app(self._apps, user_id, spec.app_id)
        request = RunRequest(
            run_id=run_id,
            app_id=spec.app_id,
            user_id=user_id,
            message=message,
            workspace=self._workspace(spec.app_id),
            code_gen_type=app.code_gen_type,
            on_disconnect=spec.on_disconnect,
            multitask=spec.multitask,
        )
        return await self._manager.start(request)

    async def start_chat(self, user_id: str, exchange: ChatExchange, run_id: str) -> Run:
        """A /v1 chat completion relayed as a run (no app: nothing to own or seed)."""
        self._limits.take_start(user_id)
        request = RunRequest(
            run_id=run_id,
            app_id=None,
            user_id=user_id,
            message=exchange.request.summary,
            workspace=None,
            kind=RunKind.CHAT,
            job=functools.partial(run_chat, llm=self._llm, exchange=exchange),
            deferred_insert=True,  # the upstream request goes out first; the row follows
        )
        return await self._manager.start(request)

    def _checked_message(self, text: str) -> str:
        message = without_nul(text).strip()
        if not message:
            raise BadRequest("message must not be empty", code="empty_message")
        if len(message) > self._max_message_chars:
            limit = self._max_message_chars
            raise PayloadTooLarge(f"message is longer than {limit} characters", code="message_too_large")
        return message

    # -- stopping --------------------------------------------------------------------------

    async def stop(
        self, user_id: str, run_id: str, mode: StopMode = StopMode.IMMEDIATE, *, settle: bool = False
    ) -> StopResult:
        """Stop the user's run wherever it lives (the caller checked the run id's shape).

        ``settle``: when the stop ends the run at once (it had ended, or was completing) or is a
        rollback, wait for its final status, so a rollback answers once the files are back.
        Raises TooManyRequests past the user's stop limit, Forbidden for another user's run.
        """
        self._limits.take_stop(user_id)
        run = self._manager.get(run_id)
        if run is not None:
            return await self._stop_live(run, user_id, mode, settle)
        # Remembered before any await: a start that is on its way takes it (pending_stops.py).
        self._manager.remember_stop(user_id, run_id, mode)
        try:
            return await self._stop_elsewhere(user_id, run_id, mode, settle)
        except Forbidden:
            self._manager.forget_stop(user_id, run_id)
            raise

    async def _stop_live(self, run: Run, user_id: str, mode: StopMode, settle: bool) -> StopResult:
        check_run_owner(run.user_id, user_id, run.id)
        outcome = run.cancel(StopReason.USER_STOP, mode)
        took_effect = outcome in (CancelOutcome.STOPPING, CancelOutcome.DEFERRED)
        on_its_way = outcome is CancelOutcome.DEFERRED or (
            outcome is CancelOutcome.STOPPING and mode is not StopMode.ROLLBACK
        )
        if not settle or on_its_way:
            return StopResult(run.id, StopState.STOPPING, run.status.value, took_effect, run.stop_mode.value)
        # Stopped already, completing, or rolling back: the final status follows within milliseconds.
        await run.wait_finished()
        return StopResult(run.id, StopState.ENDED, run.status.value, took_effect, run.stop_mode.value, run.rolled_back)

    async def _stop_elsewhere(self, user_id: str, run_id: str, mode: StopMode, settle: bool) -> StopResult:
        """A run not in this worker's memory: another worker's (stopped through it), finished, or
        not started yet (the stop is remembered for it)."""
        if self._peers is not None:
            remote = await self._peers.stop_elsewhere(run_id, user_id, StopReason.USER_STOP, mode)
            if remote is not None:
                self._manager.forget_stop(user_id, run_id)
                return await self._stopped_remotely(run_id, mode, remote, settle)
        row = await self._runs.get(run_id)
        run = self._manager.get(run_id)
        if run is not None:  # started here during those awaits: it took the remembered stop
            return await self._stop_live(run, user_id, mode, settle)
        if row is None:
            return StopResult(run_id, StopState.PENDING, "pending", True, mode.value)
        self._manager.forget_stop(user_id, run_id)  # the id is taken: no start can use it
        check_run_owner(row.user_id, user_id, run_id)
        return StopResult(run_id, StopState.ENDED, row.status, False, None)

    async def _stopped_remotely(self, run_id: str, mode: StopMode, remote: RemoteStop, settle: bool) -> StopResult:
        if not settle or (remote.stopping and mode is not StopMode.ROLLBACK):
            return StopResult(run_id, StopState.STOPPING, remote.status, remote.stopping, remote.mode)
        # As on the owner: stopped already, completing, or rolling back: answer with the final status.
        assert self._peers is not None
        await self._peers.wait_ended(run_id, ROLLBACK_WAIT_S)
        row = await self._runs.get(run_id)
        status = row.status if row else remote.status
        rolled_back = bool(row and row.rolled_back)
        return StopResult(run_id, StopState.ENDED, status, remote.stopping, remote.mode, rolled_back)
