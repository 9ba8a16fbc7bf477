"""What one LLM step produced: tiny values, accumulated from streamed deltas."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Long string arguments (file contents) are shortened in tool_call events.
PREVIEW_CHARS = 200


@dataclass(slots=True)
class PendingToolCall:
    """A tool call as it streams in: id and name first, then argument fragments."""

    call_id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)

    def finish(self, index: int) -> ToolCall:
        return ToolCall(self.call_id or f"call_{index}", self.name, "".join(self.arguments))


@dataclass(frozen=True, slots=True)
class ToolCall:
    call_id: str
    name: str
    arguments: str

    def as_message(self) -> dict[str, Any]:
        return {
            "id": self.call_id,
            "type": "function",
            "function": {"name": self.name, "arguments": self.arguments},
        }

    def display_args(self) -> dict[str, Any]:
        """The arguments for the UI: parsed, with long strings cut to a preview."""
        try:
            parsed = json.loads(self.arguments) if self.arguments.strip() else {}
        except (ValueError, RecursionError):
            return {"_raw": _preview(self.arguments)}
        if not isinstance(parsed, dict):
            return {"_raw": _preview(self.arguments)}
        return {key: _preview(value) if isinstance(value, str) else value for key, value in parsed.items()}


@dataclass(frozen=True, slots=True)
class StepOutput:
    text: str
    tool_calls: tuple[ToolCall, ...]

    def as_message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.text or None}
        if self.tool_calls:
            message["tool_calls"] = [call.as_message() for call in self.tool_calls]
        return message


def _preview(text: str) -> str:
    if len(text) <= PREVIEW_CHARS:
        return text
    return f"{text[:PREVIEW_CHARS]}… ({len(text)} chars)"
