"""Hostile bodies where the schema fuzzer cannot reach: every JSON body nested too deep, and
generated JSON for /v1/chat/completions and the WebSocket (neither is in the OpenAPI schema).

Every answer is a 4xx in the surface's own shape (or a success for a body that happens to be
valid), never a 5xx; the socket answers each frame and stays open, and the server goes on
serving. Derandomized: CI sees the same cases every run.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from websockets.sync.client import ClientConnection, connect

from tests.support import HANG_TIMEOUT_S, ServerThread
from tests.test_agent_ws import ws_url

EXAMPLES = 150
DEEP_BODIES = {
    "array": b"[" * 100_000 + b"]" * 100_000,
    "object": b'{"a":' * 50_000 + b"1" + b"}" * 50_000,
    "in a field": b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
}
# What the socket may answer a malformed frame with (docs/api.md); `internal` is a server fault.
WS_CLIENT_ERRORS = {
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "invalid_payload",
    "invalid_request_id",
    "invalid_message_id",
    "request_id_in_use",
    "app_not_found",
    "empty_message",
    "message_too_large",
    "run_id_taken",
}
SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture],
)

finite = st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
scalars = st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
)
roles = st.sampled_from(["user", "system", "assistant", "tool", "", 7, None])
messages = (
    st.lists(st.fixed_dictionaries({"role": roles, "content": json_values | st.text(max_size=30)}), max_size=3)
    | json_values
)
chat_bodies = st.fixed_dictionaries(
    {},
    optional={
        "model": json_values | st.just("runforge-sim"),
        "messages": messages,
        "stream": json_values | st.booleans(),
        "requestId": json_values | st.text(max_size=70),
        "tools": json_values,
        "stream_options": json_values,
    },
)
ws_frames = st.fixed_dictionaries(
    {"type": st.sampled_from(["REQUEST", "INTERRUPT", "HELLO", ""]) | json_values},
    optional={
        "requestId": json_values | st.text(max_size=70),
        "messageId": json_values | st.text(max_size=70),
        "payload": st.fixed_dictionaries(
            {}, optional={"appId": json_values, "message": json_values, "runId": json_values}
        )
        | json_values,
    },
)


@pytest.fixture
def server(unlimited_server: ServerThread) -> ServerThread:
    return unlimited_server  # hundreds of starts and stops a minute


def json_body_operations(http: httpx.Client) -> list[tuple[str, str]]:
    """(method, path) of every operation in the schema that takes a JSON body, path parameters
    filled with a plausible id (the body is decoded before any lookup)."""
    schema = http.get("/schema/openapi.json").json()
    found = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if "application/json" in operation.get("requestBody", {}).get("content", {}):
                found.append((method.upper(), path.replace("{app_id}", "0" * 16).replace("{run_id}", "r1")))
    return found


def assert_openai_error(response: httpx.Response) -> None:
    assert response.status_code < 500, (response.status_code, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"message", "type", "code", "param"}, error
        assert error["message"]
        assert error["code"]


def test_every_json_body_nested_too_deep_is_a_400_invalid_json(server: ServerThread, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=HANG_TIMEOUT_S) as http:
        operations = [*json_body_operations(http), ("POST", "/v1/chat/completions")]
        assert len(operations) >= 6, operations
        for method, path in operations:
            for name, body in DEEP_BODIES.items():
                response = http.request(method, path, content=body)
                assert response.status_code == 400, (method, path, name, response.text)
                error = response.json()
                code = error["error"]["code"] if path.startswith("/v1/") else error["error"]
                assert code == "invalid_json", (method, path, name, error)
        assert http.get("/healthz").status_code == 200


def test_generated_chat_completions_bodies_get_4xx_in_openais_shape(server: ServerThread, token: str) -> None:
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(base_url=server.url, headers=headers, timeout=HANG_TIMEOUT_S) as http:

        @hypothesis.given(body=chat_bodies)
        @SETTINGS
        def one(body: dict[str, Any]) -> None:
            assert_openai_error(http.post("/v1/chat/completions", json=body))

        one()
        assert http.get("/healthz").status_code == 200


def exchange(socket: ClientConnection, frame: str) -> dict[str, Any]:
    socket.send(frame)
    answer: dict[str, Any] = json.loads(socket.recv(timeout=HANG_TIMEOUT_S))
    return answer


def test_generated_websocket_frames_get_an_error_and_the_socket_stays_open(
    server: ServerThread, token: str, client_app: str
) -> None:
    with connect(ws_url(server, token), open_timeout=HANG_TIMEOUT_S) as socket:

        @hypothesis.given(frame=ws_frames.map(json.dumps) | st.text(max_size=40) | st.just("[" * 100_000))
        @SETTINGS
        def one(frame: str) -> None:
            answer = exchange(socket, frame)
            if answer["type"] == "INTERRUPT_ACK":  # an INTERRUPT whose requestId is a usable id
                assert answer["status"] in ("PENDING", "NOT_FOUND"), answer
                return
            assert answer["type"] == "ERROR", (frame, answer)
            assert answer["code"] in WS_CLIENT_ERRORS, (frame, answer)

        one()
        # Still open, and still serving: a valid request runs to its end.
        request = {"type": "REQUEST", "requestId": "fuzz-end", "payload": {"appId": client_app, "message": "a page"}}
        assert exchange(socket, json.dumps(request))["type"] == "ACK"
        while (answer := json.loads(socket.recv(timeout=HANG_TIMEOUT_S)))["type"] not in (
            "DONE",
            "ERROR",
            "INTERRUPTED",
        ):
            assert answer["type"] == "EVENT", answer
        assert answer["type"] == "DONE", answer


@pytest.fixture
def client_app(server: ServerThread, token: str) -> str:
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {token}"}) as http:
        app: dict[str, Any] = http.post("/apps", json={"name": "fuzz", "codeGenType": "html"}).json()
    return str(app["id"])
