"""What a transport asks the run manager for: a run, described once (:class:`RunRequest`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from app.control.outcomes import Completion

if TYPE_CHECKING:
    from app.control.run import Run

__all__ = ["Job", "Multitask", "OnDisconnect", "RunKind", "RunRequest"]

Job = Callable[["Run"], Awaitable[Completion]]


class RunKind(StrEnum):
    CODE = "code"  # an agent turn on an app: tools, build, history
    CHAT = "chat"  # one /v1/chat/completions request relayed to the upstream; no app


class OnDisconnect(StrEnum):
    CANCEL = "cancel"
    CONTINUE = "continue"


class Multitask(StrEnum):
    """What to do when an app already has an active run."""

    INTERRUPT = "interrupt"  # stop the old run (reason superseded), then start
    REJECT = "reject"  # answer 409


@dataclass(frozen=True, slots=True)
class RunRequest:
    run_id: str
    app_id: str | None  # None: a chat run, which has no app (and no one-run-per-app rule)
    user_id: str
    message: str
    workspace: Path | None
    code_gen_type: str = "vue_project"
    on_disconnect: OnDisconnect = OnDisconnect.CANCEL
    multitask: Multitask = Multitask.INTERRUPT
    kind: RunKind = RunKind.CODE
    # The run's work; None means the manager's default job (code generation).
    job: Job | None = None
    # Launch the run first and write its row after its first event (see RunManager._launch_then_insert).
    deferred_insert: bool = False
