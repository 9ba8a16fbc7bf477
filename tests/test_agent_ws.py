"""The agent WebSocket /ws/agent over real sockets: requests, events, interrupts, errors, auth."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.support import HANG_TIMEOUT_S, ServerThread, collect, gen_url, open_stream, wait_for_status

Message = dict[str, Any]
TERMINALS = ("DONE", "INTERRUPTED", "FAILED")
STREAM = ("ACK", "EVENT", *TERMINALS)  # what a request's own stream carries (not INTERRUPT_ACK, ERROR)
FAST = "[sim:long_text pace=20 tokens=5000]"  # a long answer, tokens flowing: plenty of time to interrupt
SSE_NAMES = {"run", "message", "template", "tool_call", "tool_result", "code_block", "build"}


class Agent:
    """One /ws/agent socket, with every message it received kept in order."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.seen: list[Message] = []

    async def send(self, **message: Any) -> None:
        await self.socket.send(json.dumps(message))

    async def request(self, app_id: str, text: str, **fields: Any) -> None:
        await self.send(type="REQUEST", payload={"appId": app_id, "message": text}, **fields)

    async def interrupt(self, request_id: str, **fields: Any) -> None:
        await self.send(type="INTERRUPT", requestId=request_id, **fields)

    async def recv(self) -> Message:
        message: Message = json.loads(await self.socket.recv())
        self.seen.append(message)
        return message

    async def until(self, predicate: Callable[[list[Message]], bool]) -> list[Message]:
        """Receive until predicate holds for everything received so far; return what this call received."""
        start = len(self.seen)
        async with asyncio.timeout(HANG_TIMEOUT_S):
            while not predicate(self.seen):
                await self.recv()
        return self.seen[start:]

    def seen_of(self, kind: str) -> list[Message]:
        return [m for m in self.seen if m["type"] == kind]

    def of(self, request_id: str) -> list[Message]:
        """The stream of one request: its ACK, EVENTs and terminal message."""
        return [m for m in self.seen if m.get("requestId") == request_id and m["type"] in STREAM]

    async def until_terminal(self, request_id: str) -> list[Message]:
        await self.until(lambda _: any(m["type"] in TERMINALS for m in self.of(request_id)))
        return self.of(request_id)

    async def until_texts(self, request_id: str, count: int) -> None:
        await self.until(lambda _: sum(is_text(m) for m in self.of(request_id)) >= count)

    async def next_of_type(self, kind: str) -> Message:
        """The first message of this type received from now on."""
        start = len(self.seen)
        await self.until(lambda seen: any(m["type"] == kind for m in seen[start:]))
        return next(m for m in self.seen[start:] if m["type"] == kind)

    async def next_not_of(self, request_id: str) -> Message:
        """The first message received from now on that is not about ``request_id`` (a run
        streaming meanwhile interleaves its events with the answers to other messages)."""
        start = len(self.seen)
        await self.until(lambda seen: any(m.get("requestId") != request_id for m in seen[start:]))
        return next(m for m in self.seen[start:] if m.get("requestId") != request_id)

    async def probe(self, html_app: str, request_id: str) -> list[Message]:
        """A quick request run to its end: afterwards, anything still in flight would have arrived."""
        start = len(self.seen)
        await self.request(html_app, "a page", requestId=request_id)
        assert (await self.until_terminal(request_id))[-1]["type"] == "DONE"
        return self.seen[start:]


def is_text(message: Message) -> bool:
    return message["type"] == "EVENT" and message["event"] == "message"


def ws_url(server: ServerThread, token: str | None = None) -> str:
    url = server.url.replace("http", "ws", 1) + "/ws/agent"
    return url if token is None else f"{url}?token={token}"


@contextlib.asynccontextmanager
async def agent(server: ServerThread, token: str | None, **kwargs: Any) -> AsyncIterator[Agent]:
    async with websockets.connect(ws_url(server, token), open_timeout=HANG_TIMEOUT_S, **kwargs) as socket:
        yield Agent(socket)


@pytest.fixture
async def html_app(client: httpx.AsyncClient) -> str:
    return await new_app(client, "html")


async def new_app(client: httpx.AsyncClient, kind: str) -> str:
    response = await client.post("/apps", json={"name": f"{kind} app", "codeGenType": kind})
    assert response.status_code == 201, response.text
    app_id: str = response.json()["id"]
    return app_id


def assert_stream(messages: list[Message], request_id: str, message_id: str | None, terminal: str) -> None:
    """ACK, then EVENTs numbered 1, 2, 3… starting with `run`, then exactly one terminal, last."""
    assert messages[0] == {"type": "ACK", "requestId": request_id, "messageId": message_id}
    events, end = messages[1:-1], messages[-1]
    assert [m["type"] for m in events] == ["EVENT"] * len(events)
    assert events[0]["event"] == "run"
    assert {m["event"] for m in events} <= SSE_NAMES
    assert [m["seq"] for m in [*events, end]] == list(range(1, len(events) + 2))
    assert all(m["data"]["runId"] == request_id for m in [*events, end])
    assert end["type"] == terminal
    assert end["messageId"] == message_id


async def test_request_ack_events_done_and_nothing_after(
    server: ServerThread, token: str, client: httpx.AsyncClient, html_app: str
) -> None:
    async with agent(server, token) as ws:
        await ws.request(html_app, "a counter page", messageId="m-1")
        ack = await ws.recv()
        request_id = ack["requestId"]
        assert ack["type"] == "ACK"
        assert len(request_id) == 32
        assert request_id != "m-1"
        stream = await ws.until_terminal(request_id)
        assert_stream(stream, request_id, "m-1", "DONE")
        assert stream[-1]["data"]["finishReason"]
        assert "code_block" in {m.get("event") for m in stream}

        after = await ws.probe(html_app, "r-after")
        assert all(m["requestId"] == "r-after" for m in after)

    run = await wait_for_status(client, request_id, "completed")
    assert run["stopReason"] is None

    # The same run over SSE (on a fresh app of the same type) names its events the same way.
    async with open_stream(client, "GET", gen_url(await new_app(client, "html"), "a counter page")) as (_, events):
        sse = await collect(events)
    assert [e.event for e in sse] == [m.get("event", "done") for m in stream[1:]]


async def test_concurrent_requests_on_one_socket(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str, html_app: str
) -> None:
    other_vue = await new_app(client, "vue_project")
    requests = {"r-a": app_id, "r-b": other_vue, "r-c": html_app}
    async with agent(server, token) as ws:
        for request_id, target in requests.items():
            text = "a page" if target == html_app else "essay [sim:long_text tokens=300]"
            await ws.request(target, text, requestId=request_id, messageId=f"m-{request_id}")
        for request_id in requests:
            await ws.until_terminal(request_id)
        await ws.probe(html_app, "r-end")  # time for a stray message to arrive

    for request_id in requests:
        assert_stream(ws.of(request_id), request_id, f"m-{request_id}", "DONE")
    assert sorted(m["requestId"] for m in ws.seen if m["type"] == "ACK") == sorted([*requests, "r-end"])
    # The runs overlapped: the two long ones were both acknowledged before either finished.
    order = [(m["type"], m["requestId"]) for m in ws.seen if m["type"] in ("ACK", "DONE")]
    first_done = next(i for i, (kind, _) in enumerate(order) if kind == "DONE")
    assert {("ACK", "r-a"), ("ACK", "r-b")} <= set(order[:first_done])


async def test_interrupt_by_request_id(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str, html_app: str
) -> None:
    async with agent(server, token) as ws:
        await ws.request(app_id, f"essay {FAST}", requestId="r-int", messageId="m-int")
        await ws.until_texts("r-int", 3)
        await ws.interrupt("r-int", reason="changed my mind")
        stream = await ws.until_terminal("r-int")
        await ws.until(lambda seen: any(m["type"] == "INTERRUPT_ACK" for m in seen))
        acks = [m for m in ws.seen if m["type"] == "INTERRUPT_ACK"]
        assert acks == [{"type": "INTERRUPT_ACK", "requestId": "r-int", "status": "SUCCESS"}]
        assert_stream(stream, "r-int", "m-int", "INTERRUPTED")
        assert stream[-1]["data"]["reason"] == "user_stop"

        after = await ws.probe(html_app, "r-after")
        assert not [m for m in after if m.get("requestId") == "r-int" and m["type"] != "INTERRUPT_ACK"]

    await server.sim_records("r-int", lambda rs: bool(rs) and rs[-1].disconnected_at is not None)
    run = await wait_for_status(client, "r-int", "interrupted")
    assert run["stopReason"] == "user_stop"


async def test_interrupt_by_message_id_is_not_found_and_an_unknown_id_is_pending(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str
) -> None:
    async with agent(server, token) as ws:
        await ws.request(app_id, f"essay {FAST}", messageId="ui-7")
        request_id = (await ws.next_of_type("ACK"))["requestId"]
        await ws.until_texts(request_id, 1)

        await ws.interrupt("ui-7")
        ack = await ws.next_of_type("INTERRUPT_ACK")
        assert (ack["requestId"], ack["status"]) == ("ui-7", "NOT_FOUND")
        assert request_id in ack["message"]
        assert "messageId" in ack["message"]

        await ws.interrupt("no-such-request")  # remembered: a request with that id stops as it starts
        ack = await ws.next_of_type("INTERRUPT_ACK")
        assert (ack["requestId"], ack["status"]) == ("no-such-request", "PENDING")
        assert request_id not in ack["message"]

        # The run went on: more text, no terminal, still running.
        texts = sum(is_text(m) for m in ws.of(request_id))
        await ws.until_texts(request_id, texts + 3)
        assert not [m for m in ws.of(request_id) if m["type"] in TERMINALS]
        assert (await client.get(f"/runs/{request_id}")).json()["status"] == "running"

        await ws.interrupt(request_id)
        assert (await ws.until_terminal(request_id))[-1]["type"] == "INTERRUPTED"
    await wait_for_status(client, request_id, "interrupted")


async def test_interrupt_finished_run_is_already_finished(
    server: ServerThread, token: str, client: httpx.AsyncClient, html_app: str
) -> None:
    async with agent(server, token) as ws, agent(server, server.add_user("mallory")) as other:
        await ws.request(html_app, "a page", requestId="r-fin")
        assert (await ws.until_terminal("r-fin"))[-1]["type"] == "DONE"
        await wait_for_status(client, "r-fin", "completed")
        await ws.interrupt("r-fin")
        ack = await ws.next_of_type("INTERRUPT_ACK")
        assert (ack["requestId"], ack["status"]) == ("r-fin", "ALREADY_FINISHED")
        # Another user learns nothing about the run: not found, not finished.
        await other.interrupt("r-fin")
        ack = await other.next_of_type("INTERRUPT_ACK")
        assert (ack["requestId"], ack["status"]) == ("r-fin", "NOT_FOUND")


async def test_other_users_interrupt_is_not_found_and_does_not_stop(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str
) -> None:
    async with agent(server, token) as ws, agent(server, server.add_user("mallory")) as other:
        await ws.request(app_id, f"essay {FAST}", requestId="r-alice")
        await ws.until_texts("r-alice", 2)
        await other.interrupt("r-alice")
        ack = await other.next_of_type("INTERRUPT_ACK")
        assert (ack["requestId"], ack["status"]) == ("r-alice", "NOT_FOUND")

        texts = sum(is_text(m) for m in ws.of("r-alice"))
        await ws.until_texts("r-alice", texts + 3)
        assert not [m for m in ws.of("r-alice") if m["type"] in TERMINALS]
        run = server.services.manager.get("r-alice")
        assert run is not None
        assert run.stop_reason is None
        assert other.seen == [ack]

        await ws.interrupt("r-alice")
        assert (await ws.until_terminal("r-alice"))[-1]["data"]["reason"] == "user_stop"


async def test_interrupt_from_a_second_socket(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str, html_app: str
) -> None:
    async with agent(server, token) as first, agent(server, token) as second:
        await first.request(app_id, f"essay {FAST}", requestId="r-two")
        await first.until_texts("r-two", 3)
        await second.interrupt("r-two")
        ack = await second.next_of_type("INTERRUPT_ACK")
        assert ack == {"type": "INTERRUPT_ACK", "requestId": "r-two", "status": "SUCCESS"}
        stream = await first.until_terminal("r-two")
        assert stream[-1]["type"] == "INTERRUPTED"
        assert stream[-1]["data"]["reason"] == "user_stop"
        assert not [m for m in first.seen if m["type"] == "INTERRUPT_ACK"]

        after = await second.probe(html_app, "r-probe")
        assert [m for m in second.seen if m["requestId"] == "r-two"] == [ack]
        assert all(m["requestId"] == "r-probe" for m in after)
    run = await wait_for_status(client, "r-two", "interrupted")
    assert run["stopReason"] == "user_stop"


async def test_malformed_messages_get_an_error_and_the_socket_stays_open(
    server: ServerThread, token: str, client: httpx.AsyncClient, html_app: str
) -> None:
    payload = {"appId": html_app, "message": "a page"}
    cases: list[tuple[str | bytes, str, dict[str, str]]] = [
        ("this is not json", "invalid_json", {}),
        ("[" * 100_000 + "]" * 100_000, "invalid_json", {}),  # nested too deep to decode
        (
            json.dumps({"type": "REQUEST", "payload": payload, "x": 1})[:-1] + ', "deep": ' + "[" * 100_000 + "}",
            "invalid_json",
            {},
        ),
        ("[1, 2]", "invalid_message", {}),
        (json.dumps({"type": "REQUEST", "payload": payload}).encode(), "invalid_message", {}),
        (json.dumps({"type": "HELLO"}), "unknown_type", {}),
        (json.dumps({"payload": payload}), "unknown_type", {}),
        (json.dumps({"type": "REQUEST", "requestId": "r-nopayload"}), "invalid_payload", {"requestId": "r-nopayload"}),
        (json.dumps({"type": "REQUEST", "payload": {"appId": html_app}}), "invalid_payload", {}),
        (json.dumps({"type": "REQUEST", "requestId": "../x", "payload": payload}), "invalid_request_id", {}),
        (json.dumps({"type": "REQUEST", "messageId": 7, "payload": payload}), "invalid_message_id", {}),
        (json.dumps({"type": "INTERRUPT"}), "invalid_message", {}),
        (json.dumps({"type": "INTERRUPT", "requestId": ""}), "invalid_message", {}),
        (
            json.dumps({"type": "REQUEST", "requestId": "r-noapp", "payload": {"appId": "nope", "message": "hi"}}),
            "app_not_found",
            {"requestId": "r-noapp"},
        ),
        (
            json.dumps(
                {"type": "REQUEST", "requestId": "r-empty", "messageId": "m-e", "payload": {**payload, "message": "  "}}
            ),
            "empty_message",
            {"requestId": "r-empty", "messageId": "m-e"},
        ),
    ]
    async with agent(server, token) as ws:
        await ws.request(html_app, "a page [sim:long_text pace=20 tokens=150]", requestId="r-live")
        await ws.until_texts("r-live", 1)
        for frame, code, echo in cases:
            await ws.socket.send(frame)
            error = await ws.next_not_of("r-live")
            assert error["type"] == "ERROR", (frame, error)
            assert error["code"] == code, (frame, error)
            assert error["message"]
            assert {k: error[k] for k in ("requestId", "messageId") if k in error} == echo, (frame, error)
        assert ws.socket.close_code is None
        # The run that was live through all of it goes on to its end.
        assert_stream(await ws.until_terminal("r-live"), "r-live", None, "DONE")

        await ws.request(html_app, "a page", requestId="r-valid")
        assert_stream(await ws.until_terminal("r-valid"), "r-valid", None, "DONE")
    for request_id in ("r-noapp", "r-empty", "r-nopayload"):
        assert (await client.get(f"/runs/{request_id}")).status_code == 404


async def test_closing_the_socket_interrupts_its_runs(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str
) -> None:
    async with agent(server, token) as ws:
        await ws.request(app_id, f"essay {FAST}", requestId="r-gone")
        await ws.until_texts("r-gone", 3)
    await server.sim_records("r-gone", lambda rs: bool(rs) and rs[-1].disconnected_at is not None)
    run = await wait_for_status(client, "r-gone", "interrupted")
    assert run["stopReason"] == "client_disconnect"


@pytest.mark.parametrize("token_param", [None, "not-a-token"])
async def test_unauthorized_gets_an_error_then_close_4401(server: ServerThread, token_param: str | None) -> None:
    async with agent(server, token_param) as ws:
        error = await ws.recv()
        assert (error["type"], error["code"]) == ("ERROR", "unauthorized")
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(HANG_TIMEOUT_S):
                await ws.recv()
        assert ws.socket.close_code == 4401


@pytest.mark.parametrize("header", ["cookie", "bearer"])
async def test_cookie_or_bearer_token_signs_in(server: ServerThread, token: str, html_app: str, header: str) -> None:
    headers = {"Cookie": f"runforge_token={token}"} if header == "cookie" else {"Authorization": f"Bearer {token}"}
    async with agent(server, None, additional_headers=headers) as ws:
        await ws.request(html_app, "a page", requestId="r-cookie")
        assert_stream(await ws.until_terminal("r-cookie"), "r-cookie", None, "DONE")


async def test_interrupt_sent_right_after_the_request_is_not_lost(
    server: ServerThread, token: str, client: httpx.AsyncClient, app_id: str
) -> None:
    """REQUEST and INTERRUPT back to back: the run may not exist yet; it is stopped when it does."""
    async with agent(server, token) as ws:
        await ws.request(app_id, f"essay {FAST}", requestId="r-race")
        await ws.interrupt("r-race")
        stream = await ws.until_terminal("r-race")
        await ws.until(lambda seen: any(m["type"] == "INTERRUPT_ACK" for m in seen))
        (ack,) = ws.seen_of("INTERRUPT_ACK")
        assert ack["status"] == "SUCCESS"
        assert stream[0]["type"] == "ACK"
        assert stream[-1]["type"] == "INTERRUPTED"
        assert not [m for m in stream if is_text(m)]  # stopped before any text
    run = await wait_for_status(client, "r-race", "interrupted")
    assert run["stopReason"] == "user_stop"


async def test_a_request_id_running_on_the_socket_is_refused_at_once(
    server: ServerThread, token: str, app_id: str, html_app: str
) -> None:
    async with agent(server, token) as ws:
        await ws.request(app_id, f"essay {FAST}", requestId="r-dup", messageId="first")
        await ws.request(html_app, "a page", requestId="r-dup", messageId="second")
        error = await ws.next_of_type("ERROR")
        assert error["code"] == "request_id_in_use"
        assert error["messageId"] == "second"
        await ws.until_texts("r-dup", 2)  # the first request goes on
        await ws.interrupt("r-dup")
        assert (await ws.until_terminal("r-dup"))[-1]["type"] == "INTERRUPTED"
