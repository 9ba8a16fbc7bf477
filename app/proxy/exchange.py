"""One chat-completions exchange: what the upstream sent so far, as the client will need it.

The chat job feeds every upstream chunk in; the /v1 handler reads from it how to end the
response: a whole ``chat.completion`` for a non-streaming client, or the closing chunks of an
interrupted stream. Both the job (cancelled at a stop) and the handler hold it, so the
partial answer outlives the job.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.control.stats import RunStats
from app.llm.chunks import Choice, Chunk, ToolCallDelta, Usage
from app.llm.client import UpstreamError
from app.proxy.request import ProxyRequest

DONE_FRAME = b"data: [DONE]\n\n"
# A stopped answer ends like a complete one: OpenAI clients then show it without an error.
STOPPED_FINISH_REASON = "stop"
_CHARS_PER_TOKEN = 4  # the usual estimate when no tokenizer is at hand

_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class _ToolCall:
    id: str | None = None
    type: str = "function"
    name: list[str] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)

    def add(self, delta: ToolCallDelta) -> None:
        self.id = delta.id or self.id
        self.type = delta.type or self.type
        if delta.function is not None:
            if delta.function.name:
                self.name.append(delta.function.name)
            if delta.function.arguments:
                self.arguments.append(delta.function.arguments)

    def view(self) -> dict[str, Any]:
        function = {"name": "".join(self.name), "arguments": "".join(self.arguments)}
        return {"id": self.id, "type": self.type, "function": function}


@dataclass(slots=True)
class _Choice:
    index: int
    role: str = "assistant"
    content: list[str] = field(default_factory=list)
    refusal: list[str] = field(default_factory=list)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    finish_reason: str | None = None

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": self.role, "content": "".join(self.content) if self.content else None}
        if self.refusal:
            message["refusal"] = "".join(self.refusal)
        if self.tool_calls:
            message["tool_calls"] = [self.tool_calls[i].view() for i in sorted(self.tool_calls)]
        return message


class ChatExchange:
    def __init__(self, request: ProxyRequest, run_id: str) -> None:
        self.request = request
        self.id = f"chatcmpl-{run_id}"  # replaced by the upstream's own id
        self.model = request.model
        self.created = int(time.time())
        self.upstream_error: UpstreamError | None = None
        self._choices: dict[int, _Choice] = {}
        self._usage: Usage | None = None
        self._generated = 0  # content and tool-argument deltas: one token each, as providers stream them

    # -- fed by the chat job ---------------------------------------------------------------

    def add(self, chunk: Chunk) -> str:
        """Take one upstream chunk in; returns its text (for the run's SSE followers)."""
        self.id = chunk.id or self.id
        self.model = chunk.model or self.model
        self.created = chunk.created or self.created
        if chunk.usage is not None:
            self._usage = chunk.usage
        texts = [self._add_choice(choice.index, choice) for choice in chunk.choices]
        return "".join(texts)

    def _add_choice(self, index: int, choice: Choice) -> str:
        state = self._choices.setdefault(index, _Choice(index))
        delta = choice.delta
        state.role = delta.role or state.role
        if delta.content:
            state.content.append(delta.content)
            self._generated += 1
        if delta.refusal:
            state.refusal.append(delta.refusal)
            self._generated += 1
        for call in delta.tool_calls or ():
            state.tool_calls.setdefault(call.index, _ToolCall()).add(call)
            self._generated += 1
        state.finish_reason = choice.finish_reason or state.finish_reason
        return delta.content or ""

    def is_usage_only(self, chunk: Chunk) -> bool:
        """The usage chunk Runforge asked for: relayed only if the client asked for it too."""
        return chunk.usage is not None and not chunk.choices and not self.request.include_usage

    @property
    def finish_reason(self) -> str:
        first = self._choices.get(0)
        return (first.finish_reason if first else None) or STOPPED_FINISH_REASON

    def record_usage(self, stats: RunStats) -> None:
        """The upstream's usage if it sent one; else counted here (the stream was cut)."""
        stats.steps = 1
        if self._usage is not None:
            stats.prompt_tokens = self._usage.prompt_tokens
            stats.completion_tokens = self._usage.completion_tokens
            stats.usage_estimated = False
        else:
            stats.prompt_tokens, stats.completion_tokens = self._estimate()
            stats.usage_estimated = True

    def _estimate(self) -> tuple[int, int]:
        return math.ceil(self.request.prompt_chars / _CHARS_PER_TOKEN), self._generated

    def usage(self) -> dict[str, int]:
        if self._usage is not None:
            prompt, completion = self._usage.prompt_tokens, self._usage.completion_tokens
        else:
            prompt, completion = self._estimate()
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    # -- read by the /v1 handler -----------------------------------------------------------

    def completion(self) -> bytes:
        """The whole answer as a ``chat.completion`` (partial if the run was stopped)."""
        choices = [
            {
                "index": c.index,
                "message": c.message(),
                "logprobs": None,
                "finish_reason": c.finish_reason or STOPPED_FINISH_REASON,
            }
            for c in self._sorted_choices()
        ]
        body = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model}
        return _encoder.encode(body | {"choices": choices, "usage": self.usage()})

    def closing_frames(self) -> bytes:
        """How a stopped stream ends: a finish chunk for each unfinished choice, the usage if
        the client asked for it, then ``[DONE]`` — exactly like a complete stream."""
        frames = [self._chunk_frame([_finish(c.index)]) for c in self._sorted_choices() if not c.finish_reason]
        if not self._choices:
            frames.append(self._chunk_frame([_finish(0)]))
        if self.request.include_usage:
            frames.append(self._chunk_frame([], usage=self.usage()))
        frames.append(DONE_FRAME)
        return b"".join(frames)

    def _sorted_choices(self) -> list[_Choice]:
        return [self._choices[i] for i in sorted(self._choices)] or [_Choice(0)]

    def _chunk_frame(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        body = {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model}
        return sse_frame(_encoder.encode(body | {"choices": choices} | extra))


def _finish(index: int) -> dict[str, Any]:
    return {"index": index, "delta": {}, "logprobs": None, "finish_reason": STOPPED_FINISH_REASON}


def sse_frame(data: bytes) -> bytes:
    """An SSE event as OpenAI streams them: one ``data:`` line per line of data, a blank line."""
    if b"\n" not in data:
        return b"data: " + data + b"\n\n"
    return b"".join(b"data: " + line + b"\n" for line in data.split(b"\n")) + b"\n"


def error_frame(code: str, message: str) -> bytes:
    """A failure after the stream began: OpenAI's in-stream error event (the SDK raises it)."""
    return sse_frame(_encoder.encode({"error": {"message": message, "type": "server_error", "code": code}}))
