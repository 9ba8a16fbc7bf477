"""What a scenario is: a function from the conversation's :class:`Turn` to the :class:`Reply` the
simulator sends (text, tool calls, delays, an injected fault or an HTTP error)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

_ARG_FRAGMENT_CHARS = 12  # a tool-argument "token": a few characters, like a real tokenizer


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # raw JSON text, on purpose not a dict: some scenarios send invalid JSON
    fragment_chars: int = _ARG_FRAGMENT_CHARS  # streamed in pieces this long


@dataclass(frozen=True)
class Fault:
    """Something broken injected into a stream after ``after`` tokens."""

    kind: Literal["error", "malformed"]
    after: int


@dataclass(frozen=True)
class Reply:
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    header_delay_s: float = 0.0  # before the response headers
    first_token_delay_s: float = 0.0  # after the headers, before the first chunk
    fault: Fault | None = None
    http_status: int | None = None  # answer at once with this error status

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True)
class Params:
    """Directive values; ``None`` means "the scenario's default"."""

    pace_ms: float | None = None
    tokens: int | None = None
    delay_s: float | None = None
    files: int | None = None
    status: int | None = None


@dataclass(frozen=True)
class Turn:
    step: int  # completed tool-call rounds so far in this conversation
    params: Params
    # From the system prompt's "Output format: ..." line: html | multi_file | vue_project | "".
    output_format: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    reply: Callable[[Turn], Reply]
    default_pace_ms: float | None = None  # None: the config's pace
