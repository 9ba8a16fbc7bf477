"""What a run did, counted: steps, tool calls (executed or not), tokens."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class ToolCallRecord:
    call_id: str
    name: str
    executed: bool = False

    def mark_executed(self) -> None:
        self.executed = True


@dataclass(slots=True)
class RunStats:
    steps: int = 0
    tool_calls: list[ToolCallRecord] = field(default_factory=list)
    # Tool calls the model had started to stream when the run was stopped.
    partial_tool_calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_estimated: bool = False

    @property
    def executed(self) -> int:
        return sum(1 for call in self.tool_calls if call.executed)

    @property
    def skipped(self) -> int:
        return len(self.tool_calls) - self.executed + self.partial_tool_calls

    def usage(self) -> dict[str, Any]:
        return {
            "promptTokens": self.prompt_tokens,
            "completionTokens": self.completion_tokens,
            "estimated": self.usage_estimated,
        }
