"""The SSE chunk decoder that replaces the SDK's typed parsing on the hot path."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from app.llm.chunks import Chunk, ErrorChunk, MalformedChunk, TruncatedStream, iter_chunks


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


async def decode_all(*lines: str, crlf: bool = False) -> list[Chunk]:
    """Decode the same body cut into pieces of every size: results must not depend on the cuts."""
    body = ("\r\n" if crlf else "\n").join(lines).encode()
    results = [[chunk async for chunk in iter_chunks(pieces(body, size))] for size in (1, 2, 7, 64, len(body) or 1)]
    assert all(result == results[0] for result in results)
    return results[0]


async def test_text_tool_calls_usage_and_done() -> None:
    chunks = await decode_all(
        'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":"Hi"}}]}',
        "",
        ": keepalive comment",
        "",
        'data: {"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"c1","type":"function",'
        '"function":{"name":"write_file","arguments":"{\\"pa"}}]}}]}',
        "",
        'data: {"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,"total_tokens":10}}',
        "",
        "data: [DONE]",
        "",
        'data: {"choices":[{"delta":{"content":"after done is never read"}}]}',
        "",
    )
    assert len(chunks) == 3
    assert chunks[0].choices[0].delta.content == "Hi"
    call = chunks[1].choices[0].delta.tool_calls
    assert call is not None
    assert (call[0].index, call[0].id) == (1, "c1")
    assert call[0].function is not None
    assert (call[0].function.name, call[0].function.arguments) == ("write_file", '{"pa')
    assert chunks[2].usage is not None
    assert (chunks[2].usage.prompt_tokens, chunks[2].usage.completion_tokens) == (7, 3)


async def test_crlf_line_endings() -> None:
    chunks = await decode_all('data: {"choices":[{"delta":{"content":"a"}}]}', "", "data: [DONE]", "", crlf=True)
    assert [c.choices[0].delta.content for c in chunks] == ["a"]


async def test_data_without_space_and_a_finish_reason_without_done() -> None:
    """Some providers omit [DONE]; a finish_reason says the answer is complete."""
    chunks = await decode_all(
        'data:{"choices":[{"delta":{"content":"a"}}]}', "", 'data: {"choices":[{"delta":{},"finish_reason":"stop"}]}'
    )
    assert [c.choices[0].delta.content for c in chunks] == ["a", None]


async def test_a_body_cut_before_the_end_is_truncated_not_complete() -> None:
    with pytest.raises(TruncatedStream):
        await decode_all('data: {"choices":[{"delta":{"content":"Here is half of the ans"}}]}', "", "")
    with pytest.raises(TruncatedStream):
        await decode_all()  # an empty 200 body


async def test_error_object_raises() -> None:
    with pytest.raises(ErrorChunk, match="boom"):
        await decode_all('data: {"error":{"message":"boom","type":"server_error","code":"x"}}', "")


async def test_malformed_data_raises() -> None:
    with pytest.raises(MalformedChunk):
        await decode_all("data: {not json", "")
