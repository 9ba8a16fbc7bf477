"""The OpenAI-compatible /v1 endpoints, driven by the real `openai` client and by raw sockets.

The upstream is the embedded simulator, reached over loopback: each test checks what the
client got and what the upstream saw (its request records: fields, chunks sent, the instant
it saw the connection close).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from app.settings import LLMSettings, Settings
from app.simulator import RequestRecord
from tests.support import HANG_TIMEOUT_S, ServerThread, collect, open_stream, wait_for_status

LONG = "[sim:long_text tokens=3000]"  # ~6 s at the tests' 2 ms pace: plenty of time to stop it


@pytest.fixture
async def oai(server: ServerThread, token: str) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0) as client:
        yield client


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def disconnected(records: list[RequestRecord]) -> bool:
    return bool(records) and records[-1].disconnected_at is not None


def sent_at_least(count: int) -> Any:
    return lambda records: bool(records) and records[-1].chunks_sent >= count


async def raw_stream(client: httpx.AsyncClient, body: dict[str, Any]) -> tuple[httpx.Response, list[bytes]]:
    """POST a streaming request and return the response and its SSE events, as bytes."""
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        raw = await response.aread()
    return response, [event for event in raw.split(b"\n\n") if event]


# -- models ---------------------------------------------------------------------------------


async def test_models_lists_what_the_upstream_offers(oai: openai.AsyncOpenAI) -> None:
    models = [model.id async for model in oai.models.list()]
    assert "runforge-sim" in models
    assert "sim-long_text" in models  # the simulator's own list, relayed


# -- completions ----------------------------------------------------------------------------


async def test_non_streaming_completion_is_whole_and_recorded(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient, server: ServerThread
) -> None:
    raw = await oai.chat.completions.with_raw_response.create(
        model="runforge-sim", messages=user("[sim:long_text tokens=12]"), extra_body={"requestId": "whole-1"}
    )
    completion = raw.parse()
    assert raw.headers["x-request-id"] == "whole-1"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content is not None
    assert len(choice.message.content.split()) == 12
    assert completion.usage is not None
    assert completion.usage.completion_tokens == 12
    run = await wait_for_status(client, "whole-1", "completed")
    assert run["kind"] == "chat"
    assert run["appId"] is None
    assert run["usage"] == {"promptTokens": completion.usage.prompt_tokens, "completionTokens": 12, "estimated": False}
    # The upstream was asked to stream (so the request stays interruptible), without Runforge's fields.
    (record,) = server.simulator.recorder.records("whole-1")
    assert record.api_key == server.settings.llm.api_key  # Runforge's key, never the client's token
    assert record.stream is True
    assert "requestId" not in record.fields
    assert "messageId" not in record.fields


async def test_a_nul_in_the_prompt_is_relayed_and_kept_out_of_the_record(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient
) -> None:
    """PostgreSQL's text type refuses NUL: the run's summary drops it; the upstream gets it as sent."""
    completion = await oai.chat.completions.create(
        model="runforge-sim", messages=user("a\x00b [sim:long_text tokens=3]"), extra_body={"requestId": "nul-1"}
    )
    assert completion.choices[0].finish_reason == "stop"
    run = await wait_for_status(client, "nul-1", "completed")
    assert "\x00" not in json.dumps(run)
    with pytest.raises(openai.BadRequestError):
        await oai.chat.completions.create(model="m\x00", messages=user("hi"))


async def test_stream_is_relayed_chunk_for_chunk(client: httpx.AsyncClient, server: ServerThread) -> None:
    body = {"model": "runforge-sim", "messages": user("[sim:long_text tokens=6]"), "stream": True}
    response, events = await raw_stream(client, {**body, "messageId": "relay-1"})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["x-request-id"] == "relay-1"
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(event.removeprefix(b"data: ")) for event in events[:-1]]
    # role chunk, 6 tokens, finish chunk: what the simulator sent; no usage chunk (not asked for).
    assert len(chunks) == 8
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert all(chunk["id"].startswith("chatcmpl-sim-") for chunk in chunks)  # the upstream's own ids
    (record,) = server.simulator.recorder.records("relay-1")
    assert record.chunks_sent == 10  # 8 chunks, the usage chunk Runforge asked for, [DONE]


async def test_sequential_requests_share_one_upstream_connection(
    client: httpx.AsyncClient, server: ServerThread
) -> None:
    """Each response is read to its end after [DONE], so its connection goes back to the pool
    (a fresh TCP connection per request cost ~0.7 ms of time to first byte, measured)."""
    for run_id in ("pool-1", "pool-2", "pool-3"):
        body = {"messages": user("[sim:long_text tokens=2]"), "stream": True, "requestId": run_id}
        await raw_stream(client, body)
        await wait_for_status(client, run_id, "completed")
    ports = {server.simulator.recorder.records(run_id)[0].client_port for run_id in ("pool-1", "pool-2", "pool-3")}
    assert len(ports) == 1


async def test_usage_chunk_is_relayed_when_the_client_asks(client: httpx.AsyncClient) -> None:
    body = {"messages": user("[sim:long_text tokens=4]"), "stream": True, "stream_options": {"include_usage": True}}
    _, events = await raw_stream(client, body)
    usage = json.loads(events[-2].removeprefix(b"data: "))
    assert usage["choices"] == []
    assert usage["usage"]["completion_tokens"] == 4


async def test_request_id_header_names_the_run(client: httpx.AsyncClient, server: ServerThread) -> None:
    body = {"messages": user("[sim:long_text tokens=3]"), "stream": True}
    async with client.stream("POST", "/v1/chat/completions", json=body, headers={"X-Request-Id": "hdr-1"}) as r:
        await r.aread()
    assert r.headers["x-request-id"] == "hdr-1"
    assert server.simulator.recorder.records("hdr-1")


async def test_generated_id_is_echoed_and_names_the_run(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/chat/completions", json={"messages": user("[sim:long_text tokens=3]")})
    assert response.status_code == 200
    run = await wait_for_status(client, response.headers["x-request-id"], "completed")
    assert run["kind"] == "chat"


async def test_a_chat_run_can_be_joined_like_any_run(client: httpx.AsyncClient) -> None:
    await client.post("/v1/chat/completions", json={"messages": user("[sim:long_text tokens=5]"), "requestId": "j-1"})
    await wait_for_status(client, "j-1", "completed")
    async with open_stream(client, "GET", "/runs/j-1/events") as (_, stream):
        events = await collect(stream)
    assert [e.event for e in events] == ["run"] + ["message"] * 5 + ["done"]


# -- interrupt ------------------------------------------------------------------------------


async def test_interrupt_ends_the_stream_like_a_normal_completion(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient, server: ServerThread
) -> None:
    stream = await oai.chat.completions.create(
        model="runforge-sim", messages=user(LONG), stream=True, extra_body={"requestId": "int-1"}
    )
    texts: list[str] = []
    last_finish = None
    async with asyncio.timeout(HANG_TIMEOUT_S):
        async for chunk in stream:  # ends without an exception: no network error for the client
            if chunk.choices:
                texts.append(chunk.choices[0].delta.content or "")
                last_finish = chunk.choices[0].finish_reason
            if len(texts) == 5:
                answer = await client.post("/v1/interrupt", json={"requestId": "int-1"})
                assert answer.status_code == 200
                assert answer.json() == {
                    "message": "Interrupt signal sent for request int-1",
                    "requestId": "int-1",
                    "status": "interrupted",
                }
    assert last_finish == "stop"
    assert 5 <= len(texts) < 3000
    records = await server.sim_records("int-1", disconnected)
    assert records[-1].chunks_sent < 3000  # the upstream stopped generating
    run = await wait_for_status(client, "int-1", "interrupted")
    assert run["stopReason"] == "user_stop"
    assert run["usage"]["estimated"] is True
    # Counted locally: every relayed token, at least (the client may not have read them all).
    assert run["usage"]["completionTokens"] >= len([t for t in texts if t])


async def test_interrupted_raw_stream_ends_with_stop_and_done(client: httpx.AsyncClient, server: ServerThread) -> None:
    body = {"messages": user(LONG), "stream": True, "requestId": "int-raw", "stream_options": {"include_usage": True}}
    events: list[bytes] = []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        buffer = b""
        async with asyncio.timeout(HANG_TIMEOUT_S):
            async for piece in response.aiter_bytes():
                buffer += piece
                *complete, buffer = buffer.split(b"\n\n")
                events += complete
                if len(events) >= 3 and not any(b"[DONE]" in e for e in events):
                    await client.post("/v1/interrupt", json={"messageId": "int-raw"})
    assert events[-1] == b"data: [DONE]"
    usage = json.loads(events[-2].removeprefix(b"data: "))
    assert usage["usage"]["completion_tokens"] >= 2
    finish = json.loads(events[-3].removeprefix(b"data: "))
    assert finish["choices"] == [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]
    assert finish["id"].startswith("chatcmpl-sim-")  # the same id as the relayed chunks
    await server.sim_records("int-raw", disconnected)


async def test_every_stop_path_works_for_a_chat_run(client: httpx.AsyncClient, server: ServerThread) -> None:
    for run_id, stop in (
        ("via-chat-stop", lambda: client.post("/app/chat/stop", json={"runId": "via-chat-stop"})),
        ("via-run-stop", lambda: client.post("/runs/via-run-stop/stop")),
    ):
        body = {"messages": user(LONG), "stream": True, "requestId": run_id}
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            raw = b""
            async with asyncio.timeout(HANG_TIMEOUT_S):
                async for piece in response.aiter_bytes():
                    if not raw:
                        assert (await stop()).status_code == 202
                    raw += piece
        assert raw.endswith(b"data: [DONE]\n\n")
        assert b'"finish_reason":"stop"' in raw
        await server.sim_records(run_id, disconnected)
        assert (await wait_for_status(client, run_id, "interrupted"))["stopReason"] == "user_stop"


async def test_non_streaming_interrupt_answers_the_partial_message(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient, server: ServerThread
) -> None:
    waiting = asyncio.create_task(
        oai.chat.completions.create(model="runforge-sim", messages=user(LONG), extra_body={"requestId": "int-whole"})
    )
    await server.sim_records("int-whole", sent_at_least(10))
    answer = await client.post("/v1/interrupt", json={"requestId": "int-whole"})
    assert answer.status_code == 200
    async with asyncio.timeout(HANG_TIMEOUT_S):
        completion = await waiting
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content
    assert 5 <= len(choice.message.content.split()) < 3000
    assert completion.usage is not None
    await server.sim_records("int-whole", disconnected)
    run = await wait_for_status(client, "int-whole", "interrupted")
    assert run["usage"]["completionTokens"] == completion.usage.completion_tokens


@pytest.mark.parametrize("stream", [True, False])
async def test_interrupt_before_the_upstream_answers_still_ends_normally(
    client: httpx.AsyncClient, server: ServerThread, stream: bool
) -> None:
    """Stopped while the upstream has not even sent its headers: no chunk was ever relayed."""
    run_id = f"no-heads-{stream}"
    body = {"messages": user("[sim:slow_headers delay=30]"), "stream": stream, "requestId": run_id}
    waiting = asyncio.create_task(client.post("/v1/chat/completions", json=body))
    await server.sim_records(run_id, bool)
    assert (await client.post("/v1/interrupt", json={"requestId": run_id})).status_code == 200
    async with asyncio.timeout(HANG_TIMEOUT_S):
        response = await waiting
    assert response.status_code == 200
    if stream:
        events = [e for e in response.content.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert json.loads(events[-2].removeprefix(b"data: "))["choices"][0]["finish_reason"] == "stop"
    else:
        assert response.json()["choices"][0]["finish_reason"] == "stop"
        assert response.json()["choices"][0]["message"]["content"] is None
    await server.sim_records(run_id, disconnected)


async def test_interrupt_errors(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient, other_client: httpx.AsyncClient
) -> None:
    unknown = await client.post("/v1/interrupt", json={"requestId": "no body"})  # no request has that id
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "request_not_found"
    assert "no body" in unknown.json()["error"]["message"]
    not_yet = await client.post("/v1/interrupt", json={"requestId": "nobody"})  # remembered for its start
    assert (not_yet.status_code, not_yet.json()["status"]) == (202, "pending")
    missing = await client.post("/v1/interrupt", json={})
    assert missing.status_code == 400
    assert missing.json()["error"]["type"] == "invalid_request_error"

    stream = await oai.chat.completions.create(
        model="runforge-sim", messages=user(LONG), stream=True, extra_body={"requestId": "theirs"}
    )
    async with stream:
        await anext(aiter(stream))
        forbidden = await other_client.post("/v1/interrupt", json={"requestId": "theirs"})
        assert forbidden.status_code == 403
        assert forbidden.json()["error"]["type"] == "permission_error"
        assert (await client.get("/runs/theirs")).json()["status"] == "running"  # not stopped
        await client.post("/v1/interrupt", json={"requestId": "theirs"})
    await wait_for_status(client, "theirs", "interrupted")
    again = await client.post("/v1/interrupt", json={"requestId": "theirs"})
    assert again.status_code == 200
    assert again.json()["status"] == "interrupted"
    assert again.json()["message"] == "Request theirs had already finished"


# -- disconnects ----------------------------------------------------------------------------


async def test_closing_the_stream_closes_the_upstream(
    oai: openai.AsyncOpenAI, client: httpx.AsyncClient, server: ServerThread
) -> None:
    stream = await oai.chat.completions.create(
        model="runforge-sim", messages=user(LONG), stream=True, extra_body={"requestId": "close-1"}
    )
    async for _ in stream:
        break
    await stream.close()
    records = await server.sim_records("close-1", disconnected)
    assert records[-1].chunks_sent < 3000
    run = await wait_for_status(client, "close-1", "interrupted")
    assert run["stopReason"] == "client_disconnect"


async def raw_request(server: ServerThread, token: str, body: dict[str, Any]) -> asyncio.StreamWriter:
    """Send a request over a bare socket and return without reading anything."""
    _reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    )
    writer.write(head.encode() + payload)
    await writer.drain()
    return writer


@pytest.mark.parametrize("stream", [True, False])
async def test_disconnect_before_the_first_token_closes_the_upstream(
    server: ServerThread, token: str, client: httpx.AsyncClient, stream: bool
) -> None:
    run_id = f"early-{stream}"
    body = {"messages": user("[sim:slow_first_token delay=30]"), "stream": stream, "requestId": run_id}
    writer = await raw_request(server, token, body)
    await server.sim_records(run_id, lambda records: bool(records) and records[-1].status == 200)
    writer.close()
    await writer.wait_closed()
    records = await server.sim_records(run_id, disconnected)
    assert records[-1].chunks_sent == 0
    run = await wait_for_status(client, run_id, "interrupted")
    assert run["stopReason"] == "client_disconnect"


async def test_headers_come_when_the_upstream_accepts_before_its_first_token(
    client: httpx.AsyncClient, server: ServerThread
) -> None:
    body = {"messages": user("[sim:slow_first_token delay=30]"), "stream": True, "requestId": "heads"}
    async with asyncio.timeout(HANG_TIMEOUT_S), client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200  # the upstream has sent nothing but its headers
        assert response.headers["content-type"].startswith("text/event-stream")
        assert server.simulator.recorder.records("heads")[-1].chunks_sent == 0
    records = await server.sim_records("heads", disconnected)  # closing after the headers stops it
    assert records[-1].chunks_sent == 0
    await wait_for_status(client, "heads", "interrupted")


async def test_non_streaming_disconnect_mid_answer_closes_the_upstream(
    server: ServerThread, token: str, client: httpx.AsyncClient
) -> None:
    writer = await raw_request(server, token, {"messages": user(LONG), "requestId": "whole-gone"})
    await server.sim_records("whole-gone", sent_at_least(5))
    writer.close()
    await writer.wait_closed()
    records = await server.sim_records("whole-gone", disconnected)
    assert records[-1].chunks_sent < 3000
    await wait_for_status(client, "whole-gone", "interrupted")


# -- upstream errors ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error"), [(429, openai.RateLimitError), (400, openai.BadRequestError), (503, openai.APIStatusError)]
)
async def test_upstream_http_errors_are_relayed_with_their_status(
    oai: openai.AsyncOpenAI, status: int, error: type[openai.APIStatusError]
) -> None:
    messages = user(f"[sim:http_error status={status}]")
    for stream in (True, False):
        with pytest.raises(error) as caught:
            await oai.chat.completions.create(model="runforge-sim", messages=messages, stream=stream)
        assert caught.value.status_code == status
        assert caught.value.code == f"sim_http_{status}"  # the upstream's own error body


async def test_error_mid_stream_reaches_the_client_as_an_error(oai: openai.AsyncOpenAI) -> None:
    stream = await oai.chat.completions.create(
        model="runforge-sim", messages=user("[sim:error_midstream]"), stream=True
    )
    with pytest.raises(openai.APIError, match="simulated upstream failure"):
        async for _ in stream:
            pass


async def test_unreachable_upstream_is_a_502(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        llm=LLMSettings(base_url="http://127.0.0.1:9/v1", api_key="k", max_retries=0, timeout_s=5.0),
        gc_freeze=False,
    )
    server = ServerThread(settings).start()
    try:
        headers = {"Authorization": f"Bearer {server.add_user('u')}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=HANG_TIMEOUT_S) as http:
            for stream in (True, False):
                response = await http.post("/v1/chat/completions", json={"messages": user("hi"), "stream": stream})
                assert response.status_code == 502
                assert response.json()["error"]["code"] == "upstream_unavailable"
            models = await http.get("/v1/models")
            assert models.status_code == 502
    finally:
        server.stop()


# -- bad requests ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"[]", 400, "invalid_json"),
        (b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", 400, "invalid_json"),  # nested too deep
        (b'{"model": "m"}', 400, "invalid_messages"),
        (b'{"messages": []}', 400, "invalid_messages"),
        (b'{"messages": [{"role": "user", "content": "x"}], "stream": "yes"}', 400, "invalid_stream"),
        (b'{"messages": [{"role": "user", "content": "x"}], "requestId": "../x"}', 400, "invalid_request_id"),
        (b'{"messages": [{"role": "user", "content": "x"}], "requestId": "a", "messageId": "b"}', 400, "ambiguous_id"),
    ],
)
async def test_bad_bodies_get_openai_style_errors(
    client: httpx.AsyncClient, server: ServerThread, body: bytes, status: int, code: str
) -> None:
    response = await client.post("/v1/chat/completions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == status
    error = response.json()["error"]
    assert error["code"] == code
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert server.simulator.recorder.records() == []  # nothing reached the upstream


async def test_auth_method_size_and_reused_ids(server: ServerThread, client: httpx.AsyncClient) -> None:
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        denied = await anonymous.post("/v1/chat/completions", json={"messages": user("x")})
        assert denied.status_code == 401
        assert denied.json()["error"]["message"]
        wrong = await anonymous.post(
            "/v1/chat/completions", json={"messages": user("x")}, headers={"Authorization": "Bearer rf_nope"}
        )
        assert wrong.json()["error"]["code"] == "invalid_api_key"
    assert (await client.get("/v1/chat/completions")).status_code == 405
    huge = {"messages": user("x" * (9 * 1024 * 1024))}
    assert (await client.post("/v1/chat/completions", json=huge)).status_code == 413
    first = await client.post(
        "/v1/chat/completions", json={"messages": user("[sim:long_text tokens=2]"), "requestId": "twice"}
    )
    assert first.status_code == 200
    second = await client.post("/v1/chat/completions", json={"messages": user("hi"), "requestId": "twice"})
    assert second.status_code == 409
    assert second.json()["error"]["code"] == "run_id_taken"
    assert second.headers["x-request-id"] == "twice"  # errors echo the request's id too
    bad = await client.post("/v1/chat/completions", content=b"{", headers={"X-Request-Id": "hdr-err"})
    assert bad.headers["x-request-id"] == "hdr-err"
    odd = await client.post("/v1/chat/completions", content=b"{", headers={"X-Request-Id": "x" * 200})
    assert "x-request-id" not in odd.headers  # not a usable id: not echoed
    assert (await client.get("/healthz")).status_code == 200  # still serving


async def test_an_id_used_long_ago_is_refused_and_the_old_run_stays(tmp_path: Path, settings: Settings) -> None:
    """A chat run's row is written after its first event; when the insert finds the id taken (the
    old run is no longer in memory), the new run is stopped and forgotten."""
    server = ServerThread(settings.with_overrides(finished_run_ttl_s=0.0)).start()
    try:
        headers = {"Authorization": f"Bearer {server.add_user('u')}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=HANG_TIMEOUT_S) as http:
            body = {"messages": user("[sim:long_text tokens=3]"), "requestId": "old"}
            assert (await http.post("/v1/chat/completions", json=body)).status_code == 200
            await wait_for_status(http, "old", "completed")
            again = await http.post("/v1/chat/completions", json={**body, "messages": user(LONG)})
            assert again.status_code == 409
            assert again.json()["error"]["code"] == "run_id_taken"
            # Streaming, the row is written after the first chunk went out (it must not delay
            # it): the refusal then ends the stream with an error event, and no [DONE].
            _, events = await raw_stream(http, {**body, "messages": user(LONG), "stream": True})
            assert json.loads(events[-1].removeprefix(b"data: "))["error"]["code"] == "run_id_taken"
            assert b"data: [DONE]" not in events
            run = (await http.get("/runs/old")).json()
            assert run["status"] == "completed"  # the old run, not the refused one
            # The refused run's upstream request, if it went out, was closed at once.
            records = server.simulator.recorder.records("old")
            assert all(r.chunks_sent < 3000 for r in records)
            await server.sim_records("old", lambda rs: all(not r.is_open for r in rs))
            assert server.services.manager.active_count == 0
    finally:
        server.stop()
