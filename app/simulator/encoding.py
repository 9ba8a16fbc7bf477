"""A reply in OpenAI's wire format: streaming deltas (one per token), chunk and completion
envelopes, usage, and error bodies."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from app.simulator.requests import ChatRequest
from app.simulator.scenario_types import Reply, ToolCall


def json_bytes(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def error_body(message: str, kind: str, code: str) -> bytes:
    return json_bytes({"error": {"message": message, "type": kind, "code": code}})


def _text_tokens(text: str) -> Iterator[str]:
    # A word with its leading whitespace is one token; joined, the tokens give back ``text``.
    return (m.group() for m in re.finditer(r"\s*\S+|\s+", text))


def _call_id(step: int, index: int) -> str:
    return f"call_sim_{step}_{index}"


def deltas(reply: Reply, step: int) -> Iterator[dict[str, Any]]:
    """The reply as OpenAI streaming deltas, one per token; the role rides on the first."""
    if reply.text or not reply.tool_calls:
        yield {"role": "assistant", "content": ""}
        for token in _text_tokens(reply.text):
            yield {"content": token}
    for index, call in enumerate(reply.tool_calls):
        function = {"name": call.name, "arguments": ""}
        head = {"index": index, "id": _call_id(step, index), "type": "function", "function": function}
        first: dict[str, Any] = {"tool_calls": [head]}
        if index == 0 and not reply.text:  # as OpenAI does: no text, so the role comes with the call
            first = {"role": "assistant", "content": None} | first
        yield first
        for start in range(0, len(call.arguments), call.fragment_chars):
            piece = call.arguments[start : start + call.fragment_chars]
            yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


@dataclass(frozen=True)
class Envelope:
    """The fields every chunk/completion of one response shares."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created}
        return json_bytes(base | {"model": self.model, "choices": choices} | extra)

    def completion(self, reply: Reply, step: int, usage: dict[str, int]) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [_full_call(step, i, call) for i, call in enumerate(reply.tool_calls)]
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}
        base = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model}
        return json_bytes(base | {"choices": [choice], "usage": usage})


def _full_call(step: int, index: int, call: ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": call.arguments}
    return {"id": _call_id(step, index), "type": "function", "function": function}


def token_usage(request: ChatRequest, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = max(1, len(json_bytes(request.messages)) // 4)  # the usual ~4 chars per token
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


def generated_tokens(reply: Reply, step: int) -> int:
    """Completion tokens: the deltas that carry text or tool arguments (not the role chunk)."""
    return sum(1 for delta in deltas(reply, step) if delta.get("content") or _has_arguments(delta))


def _has_arguments(delta: dict[str, Any]) -> bool:
    return any(call.get("function", {}).get("arguments") for call in delta.get("tool_calls", ()))
