"""A build step's output: each line a BuildEvent, and the limit it showed (app/processes.py runs it)."""

from __future__ import annotations

from collections.abc import Callable

from app.control.cancel import StopGate
from app.control.events import BuildEvent
from app.processes import GroupOutput
from app.sandbox.rlimits import limit_in_output

Emit = Callable[[BuildEvent], None]


class BuildOutput(GroupOutput):
    """Streams one step's output as events, and records the limit that ended it, if one did."""

    def __init__(self, step: str, emit: Emit, gate: StopGate, *, tail_lines: int, max_line_chars: int) -> None:
        super().__init__(tail_lines=tail_lines, max_line_chars=max_line_chars)
        self.limit: str | None = None  # a limit the output showed, or the watchdog enforced
        self._step = step
        self._emit = emit
        self._gate = gate
        self._muted = False

    def mute(self) -> None:
        self._muted = True

    def end_for(self, limit: str) -> None:
        """A watchdog's verdict: record the limit, kill the group (the step then exits)."""
        self.limit = limit  # the watchdog's measurement outranks what the output suggested
        self.kill()

    def on_line(self, line: str) -> None:
        self.limit = self.limit or limit_in_output(line)
        # The gate closes before the task is cancelled: output arriving in between is not shown either.
        if not (self._muted or self._gate.closed):
            self._emit(BuildEvent(self._step, "output", line=line))
