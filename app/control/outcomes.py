"""How a run's work ended, as tiny values passed from the agent to the run."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Completion:
    """The agent finished normally. ``finish_reason``: stop | exit | max_steps."""

    finish_reason: str


class RunFailed(Exception):
    """Ends the run with a ``failed`` event. ``code`` is stable; ``message`` is for humans."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
