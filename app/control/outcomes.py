"""How a run's work ended, as tiny values passed from the agent to the run."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Published:
    """What a completed run left behind: files it wrote, where to preview them, its checkpoint."""

    files: tuple[str, ...] = ()
    preview_url: str | None = None
    checkpoint: str | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """The agent finished normally. ``finish_reason``: stop | exit | max_steps.

    ``finalize`` holds the side effects that belong to completion only (writing the answer's
    files, swapping in the new build, the checkpoint commit). The run calls it once it is past
    the point where a stop can land, so an interrupted run never performs any of them.
    """

    finish_reason: str
    finalize: Callable[[], Awaitable[Published]] | None = None


class RunFailed(Exception):
    """Ends the run with a ``failed`` event. ``code`` is stable; ``message`` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
