"""The LLM simulator, exercised the way the agent uses it: real sockets, the real openai SDK."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionChunk

from app.agent.prompts import PROMPT_FILES, system_prompt
from app.simulator import (
    Recorder,
    RequestRecord,
    SimulatorConfig,
    SimulatorServer,
    conversation_step,
    create_simulator_app,
    output_format,
)

TOOLS: list[Any] = [
    {"type": "function", "function": {"name": name, "parameters": {"type": "object"}}}
    for name in ("write_file", "read_file", "list_dir", "exit")
]


@pytest.fixture(scope="module")
def sim() -> Iterator[SimulatorServer]:
    with SimulatorServer(SimulatorConfig(pace_ms=1.0)) as server:
        yield server


@pytest.fixture
def run_id() -> str:
    return uuid.uuid4().hex


@pytest.fixture
async def client(sim: SimulatorServer, run_id: str) -> AsyncIterator[openai.AsyncOpenAI]:
    headers = {"X-Runforge-Run-Id": run_id}
    async with openai.AsyncOpenAI(
        base_url=sim.base_url, api_key="sim", max_retries=0, default_headers=headers
    ) as client:
        yield client


async def wait_records(
    sim: SimulatorServer, run_id: str, predicate: Callable[[list[RequestRecord]], bool]
) -> list[RequestRecord]:
    """Block (in a thread, on the recorder's condition) until the run's records satisfy it."""
    ok = await asyncio.to_thread(
        sim.recorder.wait_for, lambda records: predicate([r for r in records if r.run_id == run_id]), 5.0
    )
    assert ok, sim.recorder.records(run_id)
    return sim.recorder.records(run_id)


@dataclass
class Collected:
    """A streamed response folded back together, as an agent would."""

    chunks: list[ChatCompletionChunk] = field(default_factory=list)
    text: str = ""
    calls: dict[int, dict[str, str]] = field(default_factory=dict)
    finish_reason: str | None = None

    def add(self, chunk: ChatCompletionChunk) -> None:
        self.chunks.append(chunk)
        for choice in chunk.choices:
            self.text += choice.delta.content or ""
            self.finish_reason = choice.finish_reason or self.finish_reason
            for call in choice.delta.tool_calls or []:
                slot = self.calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                slot["id"] += call.id or ""
                slot["name"] += (call.function and call.function.name) or ""
                slot["arguments"] += (call.function and call.function.arguments) or ""

    async def drain(self, stream: openai.AsyncStream[ChatCompletionChunk]) -> None:
        async for chunk in stream:
            self.add(chunk)


async def stream_round(client: openai.AsyncOpenAI, messages: list[Any], **kwargs: Any) -> Collected:
    stream = await client.chat.completions.create(
        model="runforge-sim", messages=messages, tools=TOOLS, stream=True, **kwargs
    )
    collected = Collected()
    await collected.drain(stream)
    return collected


def feed_back(messages: list[Any], collected: Collected, files: dict[str, str]) -> None:
    """Append the assistant turn and execute its write_file calls like an agent would."""
    calls = [collected.calls[i] for i in sorted(collected.calls)]
    messages.append(
        {
            "role": "assistant",
            "content": collected.text,
            "tool_calls": [
                {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                for c in calls
            ],
        }
    )
    for call in calls:
        args = json.loads(call["arguments"])
        files[args["path"]] = args["content"]
        messages.append({"role": "tool", "tool_call_id": call["id"], "content": "ok"})


def history(prompt: str, steps: int) -> list[Any]:
    """A conversation after ``steps`` completed tool rounds."""
    messages: list[Any] = [{"role": "user", "content": prompt}]
    for step in range(steps):
        call = {"id": f"c{step}", "type": "function", "function": {"name": "x", "arguments": "{}"}}
        messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        messages.append({"role": "tool", "tool_call_id": f"c{step}", "content": "ok"})
    return messages


def user(content: str) -> list[Any]:
    return [{"role": "user", "content": content}]


# --------------------------------------------------------------------------- codegen


async def test_codegen_builds_a_working_site_over_three_requests(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str
) -> None:
    messages = user("build me a site")
    files: dict[str, str] = {}

    first = await stream_round(client, messages)
    assert first.finish_reason == "tool_calls"
    assert len(first.text.split()) > 15  # some planning text before the call
    assert [c["name"] for c in first.calls.values()] == ["write_file"]
    feed_back(messages, first, files)

    second = await stream_round(client, messages)
    assert second.finish_reason == "tool_calls"
    assert [json.loads(c["arguments"])["path"] for c in second.calls.values()] == ["style.css", "script.js"]
    feed_back(messages, second, files)

    third = await stream_round(client, messages)
    assert third.finish_reason == "stop"
    assert not third.calls
    assert "ready" in third.text

    html, css, js = files["index.html"], files["style.css"], files["script.js"]
    assert html.lower().startswith("<!doctype html>")
    assert '<link rel="stylesheet" href="style.css">' in html
    assert '<script src="script.js"></script>' in html
    assert css.count("{") == css.count("}") > 3
    assert js.count("{") == js.count("}")
    assert "addEventListener" in js
    # The script only touches elements the page really has: the site works as a whole.
    for element_id in re.findall(r'getElementById\("([^"]+)"\)', js):
        assert f'id="{element_id}"' in html

    records = sim.recorder.records(run_id)
    assert [r.tool_results_seen for r in records] == [0, 1, 3]
    assert all(r.scenario == "codegen" and r.stream and r.finished_at for r in records)
    assert records[0].tool_names_offered == ["write_file", "read_file", "list_dir", "exit"]
    assert [r.seq for r in records] == sorted(r.seq for r in records)


async def test_tool_call_deltas_are_fragmented_like_openai(client: openai.AsyncOpenAI) -> None:
    collected = await stream_round(client, history("build", 1))
    first_delta = collected.chunks[0].choices[0].delta
    assert first_delta.role == "assistant"

    fragments = [
        call for chunk in collected.chunks for choice in chunk.choices for call in choice.delta.tool_calls or []
    ]
    heads = [f for f in fragments if f.id]
    assert [(h.index, h.type, h.function and h.function.name) for h in heads] == [
        (0, "function", "write_file"),
        (1, "function", "write_file"),
    ]
    rest = [f for f in fragments if not f.id]
    assert len(rest) > 20  # arguments arrive in many small pieces
    assert all(f.function and f.function.name is None and f.function.arguments for f in rest)
    assert len({c["id"] for c in collected.calls.values()}) == 2
    assert json.loads(collected.calls[1]["arguments"])["path"] == "script.js"
    # finish_reason only on the last choice chunk
    finishes = [c.choices[0].finish_reason for c in collected.chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert set(finishes[:-1]) == {None}


async def test_tool_only_reply_carries_role_on_the_first_call_fragment(client: openai.AsyncOpenAI) -> None:
    collected = await stream_round(client, history("[sim:exit_tool]", 1))
    first = collected.chunks[0].choices[0].delta
    assert first.role == "assistant"
    assert first.tool_calls
    assert first.tool_calls[0].function
    assert first.tool_calls[0].function.name == "exit"
    assert collected.calls[0]["arguments"] == "{}"
    assert collected.text == ""


async def test_non_streaming_returns_the_same_content(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str
) -> None:
    completion = await client.chat.completions.create(model="runforge-sim", messages=history("build", 1), tools=TOOLS)
    choice = completion.choices[0]
    assert completion.object == "chat.completion"
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "The page is in place. Now the styling and the counter logic."
    calls = choice.message.tool_calls or []
    paths = [json.loads(c.function.arguments)["path"] for c in calls if c.type == "function"]
    assert paths == ["style.css", "script.js"]
    assert completion.usage
    assert completion.usage.completion_tokens > 20
    (record,) = sim.recorder.records(run_id)
    assert not record.stream
    assert record.chunks_sent == 1
    assert record.finished_at


async def test_usage_chunk_only_when_requested(client: openai.AsyncOpenAI) -> None:
    with_usage = await stream_round(client, user("[sim:long_text tokens=7]"), stream_options={"include_usage": True})
    last = with_usage.chunks[-1]
    assert last.choices == []
    assert last.usage
    token_chunks = [c for c in with_usage.chunks if c.choices and c.choices[0].finish_reason is None]
    assert len(token_chunks) == 8  # role chunk + 7 words
    assert last.usage.completion_tokens == 7  # the words: the role chunk is not a generated token
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert len(with_usage.text.split()) == 7

    without = await stream_round(client, user("[sim:long_text tokens=7]"))
    assert all(c.choices and c.usage is None for c in without.chunks)


# --------------------------------------------------------------------------- scenario selection


async def test_directive_wins_over_model_name_and_the_latest_user_message_with_one_counts(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str
) -> None:
    result = await client.chat.completions.create(
        model="sim-loop", messages=user("build me a site [sim:long_text pace=0 tokens=5]")
    )
    assert result.choices[0].message.content
    assert len(result.choices[0].message.content.split()) == 5

    by_model = await client.chat.completions.create(model="sim-loop", messages=user("go"))
    assert by_model.choices[0].message.tool_calls

    # A follow-up with its own directive: that one (a later run of an app picks its own scenario).
    later = [*user("[sim:loop]"), {"role": "assistant", "content": "ok"}, *user("[sim:long_text pace=0 tokens=3]")]
    own = await client.chat.completions.create(model="gpt-whatever", messages=later, tools=TOOLS)
    assert len((own.choices[0].message.content or "").split()) == 3

    # A follow-up without one goes on with the conversation's scenario.
    follow_up = [*user("[sim:long_text pace=0 tokens=4]"), {"role": "assistant", "content": "ok"}, *user("more")]
    goes_on = await client.chat.completions.create(model="gpt-whatever", messages=follow_up, tools=TOOLS)
    assert len((goes_on.choices[0].message.content or "").split()) == 4

    plain = [*user("plain"), {"role": "assistant", "content": "ok"}, *user("go on")]
    default = await client.chat.completions.create(model="gpt-whatever", messages=plain)
    assert default.choices[0].finish_reason == "stop"  # no tools offered: the fenced-blocks page answer
    assert "```html" in (default.choices[0].message.content or "")

    with_tools = await client.chat.completions.create(model="gpt-whatever", messages=plain, tools=TOOLS)
    assert with_tools.choices[0].finish_reason == "tool_calls"  # codegen, the config default

    scenarios = [r.scenario for r in sim.recorder.records(run_id)]
    assert scenarios == ["long_text", "loop", "long_text", "long_text", "page", "codegen"]
    assert [r.model for r in sim.recorder.records(run_id)] == ["sim-loop"] * 2 + ["gpt-whatever"] * 4


@pytest.mark.parametrize(
    ("model", "content", "code"),
    [
        ("runforge-sim", "hi [sim:nope]", "unknown_scenario"),
        ("sim-nope", "hi", "unknown_scenario"),
        ("runforge-sim", "hi [sim:long_text pace=fast]", "bad_directive"),
        ("runforge-sim", "hi [sim:long_text colour=red]", "bad_directive"),
    ],
)
async def test_bad_scenario_selection_is_a_400(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str, model: str, content: str, code: str
) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model=model, messages=user(content), stream=True)
    assert info.value.status_code == 400
    assert info.value.code == code
    assert sim.recorder.records(run_id) == []  # never reached the "model"


@pytest.mark.parametrize(
    ("directive", "step", "expected"),
    [
        ("[sim:tools_midstream files=2]", 0, ("write_file", "file_1.txt")),
        ("[sim:tools_midstream files=2]", 1, ("write_file", "file_2.txt")),
        ("[sim:tools_midstream files=2]", 2, None),
        ("[sim:bad_tool_args]", 1, ("write_file", "fixed.txt")),
        ("[sim:bad_tool_args]", 2, None),
        ("[sim:escape]", 0, ("write_file", "../escape.txt")),
        ("[sim:escape]", 1, ("write_file", "/tmp/runforge-escape.txt")),
        ("[sim:escape]", 2, ("read_file", "../../etc/passwd")),
        ("[sim:escape]", 3, ("write_file", "a\x00b.txt")),
        ("[sim:escape]", 4, None),
        ("[sim:loop]", 0, ("list_dir", ".")),
        ("[sim:loop]", 40, ("list_dir", ".")),
        ("[sim:exit_tool]", 0, ("write_file", "index.html")),
        ("[sim:exit_tool]", 2, None),
    ],
)
async def test_multi_step_scenarios_follow_the_conversation(
    client: openai.AsyncOpenAI, directive: str, step: int, expected: tuple[str, str] | None
) -> None:
    result = await client.chat.completions.create(
        model="runforge-sim", messages=history(f"go {directive[:-1]} pace=0]", step)
    )
    choice = result.choices[0]
    calls = [c for c in choice.message.tool_calls or [] if c.type == "function"]
    if expected is None:
        assert choice.finish_reason == "stop"
        assert not calls
        assert choice.message.content
    else:
        assert choice.finish_reason == "tool_calls"
        assert [(c.function.name, json.loads(c.function.arguments)["path"]) for c in calls] == [expected]


async def test_bad_tool_args_first_sends_invalid_json(client: openai.AsyncOpenAI) -> None:
    result = await client.chat.completions.create(model="sim-bad_tool_args", messages=user("go"))
    (call,) = [c for c in result.choices[0].message.tool_calls or [] if c.type == "function"]
    assert call.function.name == "write_file"
    with pytest.raises(json.JSONDecodeError):
        json.loads(call.function.arguments)


def test_conversation_step_counts_rounds_not_tool_messages() -> None:
    parallel = [
        *user("x"),
        {"role": "assistant", "tool_calls": [{"id": "a"}, {"id": "b"}]},
        {"role": "tool", "content": "1"},
        {"role": "tool", "content": "2"},
    ]
    assert conversation_step(parallel) == 1
    # A client that drops assistant tool_calls still advances by runs of tool results.
    bare = [*user("x"), {"role": "tool"}, {"role": "assistant"}, {"role": "tool"}, {"role": "tool"}]
    assert conversation_step(bare) == 2
    assert conversation_step(user("x")) == 0


@pytest.mark.parametrize("code_gen_type", sorted(PROMPT_FILES))
def test_every_system_prompt_names_its_output_format_as_the_simulator_reads_it(code_gen_type: str) -> None:
    assert output_format([{"role": "system", "content": system_prompt(code_gen_type)}]) == code_gen_type


# --------------------------------------------------------------------------- failures


async def test_error_midstream_raises_api_error_after_some_text(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str
) -> None:
    collected = Collected()
    stream = await client.chat.completions.create(model="sim-error_midstream", messages=user("go"), stream=True)
    with pytest.raises(openai.APIError, match="simulated upstream failure") as info:
        await collected.drain(stream)
    assert not isinstance(info.value, openai.APIStatusError)
    assert len(collected.text.split()) == 19  # role chunk + 19 words = 20 tokens
    assert collected.finish_reason is None
    (record,) = sim.recorder.records(run_id)
    assert record.chunks_sent == 21  # 20 tokens + the error event, no [DONE]
    assert record.finished_at


@pytest.mark.parametrize(("status", "error_type"), [(503, openai.InternalServerError), (429, openai.RateLimitError)])
async def test_http_error_answers_with_the_requested_status(
    client: openai.AsyncOpenAI, status: int, error_type: type[openai.APIStatusError]
) -> None:
    with pytest.raises(error_type) as info:
        await client.chat.completions.create(
            model="runforge-sim", messages=user(f"[sim:http_error status={status}]"), stream=True
        )
    assert info.value.status_code == status
    assert info.value.code == f"sim_http_{status}"
    assert (info.value.response.headers.get("retry-after") == "0") is (status == 429)


async def test_malformed_chunk_breaks_the_sdk_stream(client: openai.AsyncOpenAI) -> None:
    collected = Collected()
    stream = await client.chat.completions.create(model="sim-malformed", messages=user("go"), stream=True)
    with pytest.raises(json.JSONDecodeError):
        await collected.drain(stream)
    assert len(collected.chunks) == 10


async def test_huge_is_unpaced_and_complete(client: openai.AsyncOpenAI, sim: SimulatorServer, run_id: str) -> None:
    collected = await stream_round(client, user("[sim:huge tokens=3000]"))
    assert len(collected.text.split()) == 3000
    (record,) = sim.recorder.records(run_id)
    assert record.chunks_sent == 3003  # role + 3000 words + finish + [DONE]
    assert record.finished_at
    # Unpaced: written in a few batches, far faster than the 1 ms config pace would allow.
    assert record.finished_at - record.started_at < 3.0


# --------------------------------------------------------------------------- disconnects


async def test_closing_the_stream_is_recorded_as_a_disconnect_at_once(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str
) -> None:
    # 300 ms per token: a server that only noticed the disconnect when writing the next
    # token would record it far later than the 150 ms allowed below.
    stream = await client.chat.completions.create(
        model="runforge-sim", messages=user("[sim:long_text pace=300 tokens=50]"), stream=True
    )
    first = await stream.__anext__()
    assert first.choices[0].delta.role == "assistant"
    closed_at = time.monotonic()
    await stream.close()

    (record,) = await wait_records(sim, run_id, lambda rs: bool(rs) and rs[0].disconnected_at is not None)
    assert record.disconnected_at is not None
    assert record.disconnected_at - closed_at < 0.15
    assert record.finished_at is None
    assert record.chunks_sent == 1
    assert not record.is_open
    assert not [r for r in sim.recorder.records(run_id) if r.is_open]


async def test_cancelling_before_the_first_token_is_recorded(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str
) -> None:
    stream = await client.chat.completions.create(
        model="runforge-sim", messages=user("[sim:slow_first_token delay=30]"), stream=True
    )  # headers arrive at once; the first chunk would take 30 s

    consuming = asyncio.Event()

    async def consume() -> None:
        async with stream:  # as an agent does: cancellation closes the response
            consuming.set()
            async for _ in stream:
                pass

    task = asyncio.create_task(consume())
    await consuming.wait()  # the consumer is now blocked on the first chunk
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    (record,) = await wait_records(sim, run_id, lambda rs: rs[0].disconnected_at is not None)
    assert record.status == 200
    assert record.first_chunk_at is None
    assert record.chunks_sent == 0
    assert record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < 1.0


@pytest.mark.parametrize(
    ("content", "stream"),
    [("[sim:slow_headers delay=30]", True), ("[sim:long_text pace=100 tokens=500]", False)],
)
async def test_cancelling_while_waiting_for_headers_is_recorded(
    sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str, content: str, stream: bool
) -> None:
    task = asyncio.create_task(
        client.chat.completions.create(model="runforge-sim", messages=user(content), stream=stream)
    )
    await wait_records(sim, run_id, lambda rs: len(rs) == 1)  # the request is in the server
    cancelled_at = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    (record,) = await wait_records(sim, run_id, lambda rs: rs[0].disconnected_at is not None)
    assert record.status is None  # no headers were ever sent
    assert record.stream is stream
    assert record.disconnected_at is not None
    assert record.disconnected_at - cancelled_at < 1.0
    assert record.finished_at is None


async def test_a_failing_send_counts_as_a_disconnect() -> None:
    """ASGI servers may raise OSError from send() once the client is gone (uvicorn drops it)."""
    recorder = Recorder()
    app = create_simulator_app(SimulatorConfig(pace_ms=0.0), recorder)
    body = json.dumps({"model": "m", "stream": True, "messages": user("[sim:long_text tokens=50]")})
    requests = [{"type": "http.request", "body": body.encode(), "more_body": False}]
    never = asyncio.Event()
    sent: list[Any] = []

    async def receive() -> Any:
        if not requests:
            await never.wait()  # the client never reports a disconnect itself
        return requests.pop()

    async def send(message: Any) -> None:
        if message["type"] == "http.response.body":
            raise ConnectionResetError("peer gone")
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": [], "query_string": b""}
    await asyncio.wait_for(app(scope, receive, send), timeout=5)

    (record,) = recorder.records()
    assert [m["type"] for m in sent] == ["http.response.start"]
    assert record.disconnected_at is not None
    assert record.finished_at is None
    assert record.chunks_sent == 0
    assert recorder.open_requests() == 0


# --------------------------------------------------------------------------- other endpoints


async def test_inspection_endpoints(sim: SimulatorServer, client: openai.AsyncOpenAI, run_id: str) -> None:
    await client.chat.completions.create(model="runforge-sim", messages=user("[sim:long_text tokens=3]"))
    root = sim.base_url.removesuffix("/v1")
    async with httpx.AsyncClient() as http:
        records = (await http.get(f"{root}/_sim/requests", params={"run_id": run_id})).json()
        other = (await http.get(f"{root}/_sim/requests", params={"run_id": "someone-else"})).json()
        health = await http.get(f"{root}/_sim/health")
        missing = await http.get(f"{root}/v1/nothing")
        bad = await http.post(f"{sim.base_url}/chat/completions", content=b"{not json")

    assert len(records) == 1
    assert records[0]["run_id"] == run_id
    assert records[0]["scenario"] == "long_text"
    assert records[0]["stream"] is False
    assert records[0]["finished_at"] >= records[0]["started_at"]
    assert other == []
    assert health.status_code == 200
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
    assert bad.status_code == 400
    assert set(bad.json()["error"]) == {"message", "type", "code"}

    models = [m.id async for m in client.models.list()]
    assert models[0] == "runforge-sim"
    assert {"sim-codegen", "sim-long_text", "sim-escape", "sim-huge"} <= set(models)


# --------------------------------------------------------------------------- recorder and server


def _record(run_id: str | None) -> RequestRecord:
    return RequestRecord(
        seq=0,
        run_id=run_id,
        scenario="codegen",
        model="m",
        stream=True,
        started_at=time.monotonic(),
        tool_results_seen=0,
        tool_names_offered=["write_file"],
    )


def test_recorder_tracks_open_requests_and_never_reuses_seq() -> None:
    recorder = Recorder()
    first = recorder.add(_record("a"))
    second = recorder.add(_record("b"))
    assert recorder.open_requests() == 2
    recorder.note_finished(first, time.monotonic())
    recorder.note_disconnected(first, time.monotonic())  # after the end: not a disconnect
    recorder.note_disconnected(second, time.monotonic())
    assert recorder.open_requests() == 0
    (a,) = recorder.records("a")
    assert a.disconnected_at is None
    a.tool_names_offered.append("mutated")  # a copy: the recorder's own record is untouched
    assert recorder.records("a")[0].tool_names_offered == ["write_file"]
    assert not recorder.wait_for(lambda records: len(records) > 2, timeout=0.01)
    recorder.clear()
    assert recorder.records() == []
    assert recorder.add(_record(None)) == 3


def test_server_start_fails_loudly_on_a_busy_port() -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        server = SimulatorServer(port=busy.getsockname()[1])
        with pytest.raises(OSError, match="in use"):
            server.start()


async def test_embedded_server_leaves_signal_handlers_alone() -> None:
    before = signal.getsignal(signal.SIGINT)
    with SimulatorServer() as server:
        assert signal.getsignal(signal.SIGINT) is before
        async with httpx.AsyncClient() as http:
            assert (await http.get(server.base_url.removesuffix("/v1") + "/_sim/health")).status_code == 200
    assert signal.getsignal(signal.SIGINT) is before
    with pytest.raises(httpx.ConnectError):
        async with httpx.AsyncClient() as http:
            await http.get(server.base_url.removesuffix("/v1") + "/_sim/health")


def test_standalone_module_prints_its_base_url_and_serves() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.simulator", "--port", "0", "--pace-ms", "1"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        base_url = re.search(r"http://\S+/v1", line)
        assert base_url, line
        response = httpx.get(base_url.group().removesuffix("/v1") + "/_sim/health", timeout=5)
        assert response.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0  # Ctrl+C is a clean exit


def test_the_record_is_bounded_keeping_open_requests_and_the_newest_prompts() -> None:
    """The simulator serves as long as `make run` does: its record may not grow without end."""
    recorder = Recorder(max_records=5, full_prompts=2)

    def add(prompt: str) -> int:
        return recorder.add(RequestRecord(0, "r", "page", "m", True, 0.0, 0, [], last_user_message=prompt))

    still_open = add("first " + "x" * 5000)
    for index in range(1, 20):
        recorder.note_finished(add(f"{index} " + "y" * 5000), at=1.0)
    records = recorder.records()
    assert [r.seq for r in records] == [still_open, 17, 18, 19, 20]  # the oldest finished went first
    assert recorder.open_requests() == 1
    assert [len(r.last_user_message) for r in records] == [2000, 2000, 2000, 5003, 5003]  # newest two whole
