"""Streamed chat-completion chunks, decoded with msgspec.

The SDK's typed chunk models cost ~150 µs per chunk to build (measured here); msgspec decodes
the same chunk in under 1 µs. At 200 concurrent streams of ~66 tokens/s the difference is two
CPU-seconds per second, i.e. a saturated event loop and slow stops. So the SDK still sends the
request (auth, retries, status errors), and this module reads the body's SSE lines.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import msgspec


class FunctionDelta(msgspec.Struct):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct):
    index: int = 0
    id: str | None = None
    function: FunctionDelta | None = None


class Delta(msgspec.Struct):
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class Choice(msgspec.Struct):
    index: int = 0
    delta: Delta = msgspec.field(default_factory=Delta)
    finish_reason: str | None = None


class Usage(msgspec.Struct):
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ErrorBody(msgspec.Struct):
    message: str | None = None
    type: str | None = None
    code: str | int | None = None


class Chunk(msgspec.Struct):
    choices: list[Choice] = msgspec.field(default_factory=list)
    usage: Usage | None = None
    # Providers report a failure inside a 200 stream as {"error": {...}}.
    error: ErrorBody | None = None


class MalformedChunk(ValueError):
    """A `data:` line that is not a chunk."""


_decoder = msgspec.json.Decoder(Chunk)
DONE = "[DONE]"


async def iter_chunks(lines: AsyncIterator[str]) -> AsyncIterator[Chunk]:
    """SSE lines -> chunks, until `data: [DONE]` or the end of the body."""
    data: list[str] = []
    async for line in lines:
        if line:
            if line.startswith("data:"):
                data.append(line[6:] if line.startswith("data: ") else line[5:])
            continue  # `event:`, `id:`, comments: not used by chat completions
        if not data:
            continue
        payload = "\n".join(data)
        data.clear()
        if payload.strip() == DONE:
            return
        yield decode(payload)
    if data and "\n".join(data).strip() != DONE:
        yield decode("\n".join(data))


def decode(payload: str) -> Chunk:
    try:
        return _decoder.decode(payload)
    except msgspec.DecodeError as exc:
        raise MalformedChunk(str(exc)) from exc
