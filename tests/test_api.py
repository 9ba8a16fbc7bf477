"""The HTTP API over real sockets: apps, files, bad input, X-Request-Id and ownership."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from app.api.sse import parse_last_event_id
from app.errors import BadRequest
from app.settings import LLMSettings, Settings
from tests.support import HANG_TIMEOUT_S, Event, ServerThread, collect, gen_url, open_stream, text_of


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


FAST = "[sim:long_text pace=20 tokens=5000]"  # a long answer, tokens flowing
SHORT = "[sim:long_text tokens=3]"
# A connection per request. The test server's sockets keep Nagle on, so every response on a reused
# (keep-alive) connection waits ~40 ms for a delayed ACK; a fresh connection is answered at once.
FRESH = httpx.Limits(max_keepalive_connections=0)


@pytest.fixture
async def client(server: ServerThread, token: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, headers=bearer(token), timeout=30.0, limits=FRESH) as http:
        yield http


@pytest.fixture
async def other_client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    """A second, unrelated user."""
    headers = bearer(server.add_user("mallory"))
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30.0, limits=FRESH) as http:
        yield http


def is_text(event: Event) -> bool:
    return event.event == "message"


def assert_error_body(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Every error is JSON of one shape; validation errors also carry `details`."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert isinstance(body["error"], str)
    assert body["error"]
    assert isinstance(body["message"], str)
    assert body["message"]
    if code is not None:
        assert body["error"] == code, body
    if body["error"] == "invalid_request":
        assert isinstance(body["details"], list), body
    return body


async def raw_get(port: int, path: str, token: str) -> tuple[int, dict[str, Any]]:
    """GET with the path sent byte for byte: httpx would normalise `..` segments away."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        async with asyncio.timeout(HANG_TIMEOUT_S):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), json.loads(body)


async def run_to_end(client: httpx.AsyncClient, url: str, **kwargs: Any) -> list[Event]:
    async with open_stream(client, "GET", url, **kwargs) as (response, events):
        assert response.status_code == 200
        return await collect(events)


# -- apps --------------------------------------------------------------------------------------


async def test_create_get_and_list_apps(client: httpx.AsyncClient, other_client: httpx.AsyncClient) -> None:
    created = await client.post("/apps", json={"name": "Counter", "initPrompt": "a click counter"})
    assert created.status_code == 201
    app = created.json()
    assert app["name"] == "Counter"
    assert app["initPrompt"] == "a click counter"
    assert app["codeGenType"] == "multi_file"  # no rule fired: the default
    assert app.pop("codeGenTypeRule") == "default"  # only the create response says why
    assert isinstance(app["id"], str)
    assert app["id"]

    html = await client.post("/apps", json={"initPrompt": "  a landing page  ", "codeGenType": "html"})
    assert html.status_code == 201
    assert html.json()["codeGenType"] == "html"
    assert html.json()["codeGenTypeRule"] == "given"
    assert html.json()["name"] == "a landing page"  # named after the prompt when no name is given
    theirs = await other_client.post("/apps", json={"name": "not yours"})
    assert theirs.status_code == 201

    listed = await client.get("/apps")
    assert listed.status_code == 200
    assert {a["id"] for a in listed.json()} == {app["id"], html.json()["id"]}
    assert [a["id"] for a in (await other_client.get("/apps")).json()] == [theirs.json()["id"]]
    fetched = await client.get(f"/apps/{app['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == app


async def test_messages_and_files_after_a_codegen_run(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    assert (await client.get(f"/apps/{app_id}/messages")).json() == []
    assert (await client.get(f"/apps/{app_id}/files")).json() == []
    seen = await run_to_end(client, gen_url(app_id, "a counter site [sim:codegen]", runId="r-code"))
    assert seen[-1].event == "done"

    messages = (await client.get(f"/apps/{app_id}/messages")).json()
    assert [(m["role"], m["runId"], m["content"]) for m in messages] == [
        ("user", "r-code", "a counter site [sim:codegen]"),
        ("ai", "r-code", text_of(seen)),
    ]
    files = (await client.get(f"/apps/{app_id}/files")).json()
    workspace = server.settings.workspaces_dir / app_id
    assert {f["path"] for f in files} == {"index.html", "style.css", "script.js"}
    assert all(f["kind"] == "file" and f["size"] == (workspace / f["path"]).stat().st_size for f in files)

    index = await client.get(f"/apps/{app_id}/files/index.html")
    assert index.status_code == 200
    body = index.json()
    assert body["path"] == "index.html"
    assert body["content"].startswith("<!doctype html>")
    assert '<script src="script.js"></script>' in body["content"]
    assert body["content"] == (workspace / "index.html").read_text()


async def test_delete_app_removes_it_and_its_workspace(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    seen = await run_to_end(client, gen_url(app_id, "build it [sim:exit_tool]"))
    assert seen[-1].event == "done"
    workspace = server.settings.workspaces_dir / app_id
    assert (workspace / "index.html").is_file()

    deleted = await client.delete(f"/apps/{app_id}")
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_error_body(await client.get(f"/apps/{app_id}"), 404, "app_not_found")
    assert_error_body(await client.get(f"/apps/{app_id}/messages"), 404, "app_not_found")
    assert_error_body(await client.delete(f"/apps/{app_id}"), 404, "app_not_found")
    assert not workspace.exists()
    assert app_id not in {a["id"] for a in (await client.get("/apps")).json()}


async def test_delete_app_stops_its_active_run(server: ServerThread, client: httpx.AsyncClient, app_id: str) -> None:
    async with open_stream(client, "GET", gen_url(app_id, f"essay {FAST}", runId="r-del")) as (_, events):
        await collect(events, until=is_text)
        deleted = await client.delete(f"/apps/{app_id}")
        rest = await collect(events)
    assert deleted.status_code == 204
    assert rest[-1].event == "interrupted"
    assert rest[-1].data == {"reason": "user_stop", "mode": "immediate", "runId": "r-del"}
    # The upstream request was closed, not left streaming into a deleted app.
    records = await server.sim_records("r-del", lambda rs: bool(rs) and rs[-1].disconnected_at is not None)
    assert records[-1].finished_at is None
    assert_error_body(await client.get(f"/apps/{app_id}"), 404, "app_not_found")


# -- bad input -------------------------------------------------------------------------------


@dataclass
class World:
    """One server shared by the bad-input table: alice's app with a finished run, mallory's app."""

    server: ServerThread
    token: str
    app_id: str
    foreign_app_id: str
    run_id: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("api") / "data",
        llm=LLMSettings(max_retries=0, timeout_s=30.0),
        simulator_pace_ms=2.0,
        sse_ping_s=5.0,
        gc_freeze=False,
    )
    server = ServerThread(settings).start()
    try:
        token, other = server.add_user("alice"), server.add_user("mallory")
        with httpx.Client(base_url=server.url, timeout=HANG_TIMEOUT_S) as http:
            app_id = http.post("/apps", json={"name": "mine"}, headers=bearer(token)).json()["id"]
            foreign = http.post("/apps", json={"name": "theirs"}, headers=bearer(other)).json()["id"]
            url = gen_url(app_id, f"hi {SHORT}", runId="r-existing")
            with http.stream("GET", url, headers=bearer(token)) as response:
                assert b"event: done" in response.read()
        yield World(server, token, app_id, foreign, "r-existing")
    finally:
        server.stop()


@pytest.fixture
async def world_client(world: World) -> AsyncIterator[httpx.AsyncClient]:
    headers = bearer(world.token)
    async with httpx.AsyncClient(base_url=world.server.url, headers=headers, timeout=30.0, limits=FRESH) as http:
        yield http


JSON = {"content-type": "application/json"}
GEN = "/app/chat/gen/code"
TOO_LONG = "x" * (Settings().max_message_chars + 1)
DEFAULT_MAX_BODY_BYTES = Settings().max_body_bytes
OVER_BODY_LIMIT = b'{"name": "' + b"x" * DEFAULT_MAX_BODY_BYTES + b'"}'
# Nested far deeper than any decoder recurses (msgspec refuses with RecursionError), under the body limit.
DEEP_ARRAY = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000

# (method, path, request kwargs, status, error code). {app}, {foreign}, {run} are filled in.
BAD_INPUT = [
    pytest.param("POST", "/apps", {"content": b'{"name": ', "headers": JSON}, 400, "invalid_json", id="apps-bad-json"),
    pytest.param("POST", "/apps", {"content": DEEP_ARRAY, "headers": JSON}, 400, "invalid_json", id="apps-deep-array"),
    pytest.param(
        "POST", "/apps", {"content": DEEP_OBJECT, "headers": JSON}, 400, "invalid_json", id="apps-deep-object"
    ),
    pytest.param("POST", "/apps", {"json": {"name": 5}}, 400, "invalid_request", id="apps-wrong-type"),
    pytest.param("POST", "/apps", {"json": ["a"]}, 400, "invalid_request", id="apps-not-an-object"),
    pytest.param("POST", "/apps", {"json": {"nmae": "x"}}, 400, "invalid_request", id="apps-unknown-field"),
    pytest.param("POST", "/apps", {"json": {"codeGenType": "cobol"}}, 400, "invalid_request", id="apps-codegentype"),
    pytest.param("POST", "/apps", {"json": {"name": "n" * 201}}, 400, "invalid_name", id="apps-long-name"),
    pytest.param("POST", "/apps", {"json": {"name": "  "}}, 400, "invalid_name", id="apps-blank-name"),
    # NUL: PostgreSQL's text type refuses it, so an id with one is found nowhere (prompts drop it)
    pytest.param("GET", GEN, {"params": {"appId": "a\x00b", "message": "hi"}}, 404, "app_not_found", id="get-nul-app"),
    pytest.param(
        "GET", GEN, {"params": {"appId": "{app}", "message": "\x00 "}}, 400, "empty_message", id="get-nul-only"
    ),
    pytest.param("GET", "/apps/a%00b", {}, 404, "app_not_found", id="app-nul-id"),
    pytest.param(
        "POST", "/apps", {"content": OVER_BODY_LIMIT, "headers": JSON}, 413, "too_large", id="apps-body-too-large"
    ),
    # gen, GET
    pytest.param("GET", GEN, {"params": {"message": "hi"}}, 400, "invalid_request", id="get-no-appId"),
    pytest.param("GET", GEN, {"params": {"appId": "{app}"}}, 400, "invalid_request", id="get-no-message"),
    pytest.param("GET", GEN, {"params": {"appId": "{app}", "message": ""}}, 400, "empty_message", id="get-empty"),
    pytest.param("GET", GEN, {"params": {"appId": "{app}", "message": " \n\t "}}, 400, "empty_message", id="get-blank"),
    pytest.param(
        "GET", GEN, {"params": {"appId": "{app}", "message": TOO_LONG}}, 413, "message_too_large", id="get-too-long"
    ),
    pytest.param(
        "GET", GEN, {"params": {"appId": "{app}", "message": "hi", "runId": "a b"}}, 400, "invalid_run_id", id="get-rid"
    ),
    pytest.param(
        "GET",
        GEN,
        {"params": {"appId": "{app}", "message": "hi", "runId": "../x"}},
        400,
        "invalid_run_id",
        id="get-rid-traversal",
    ),
    pytest.param(
        "GET",
        GEN,
        {"params": {"appId": "{app}", "message": "hi", "runId": "r" * 65}},
        400,
        "invalid_run_id",
        id="get-rid-too-long",
    ),
    pytest.param(
        "GET", GEN, {"params": {"appId": "{app}", "message": "hi", "runId": "{run}"}}, 409, "run_id_taken", id="get-dup"
    ),
    pytest.param("GET", GEN, {"params": {"appId": "nope", "message": "hi"}}, 404, "app_not_found", id="get-no-app"),
    pytest.param("GET", GEN, {"params": {"appId": "{foreign}", "message": "hi"}}, 403, "forbidden", id="get-foreign"),
    pytest.param(
        "GET",
        GEN,
        {"params": {"appId": "{app}", "message": "hi", "onDisconnect": "linger"}},
        400,
        "invalid_request",
        id="get-ondisconnect",
    ),
    pytest.param(
        "GET",
        GEN,
        {"params": {"appId": "{app}", "message": "hi", "multitask": "queue"}},
        400,
        "invalid_request",
        id="get-multitask",
    ),
    # gen, POST
    pytest.param("POST", GEN, {"content": b"{", "headers": JSON}, 400, "invalid_json", id="post-bad-json"),
    pytest.param("POST", GEN, {"content": DEEP_OBJECT, "headers": JSON}, 400, "invalid_json", id="post-deep-json"),
    pytest.param("POST", GEN, {"json": {"message": "hi"}}, 400, "invalid_request", id="post-no-appId"),
    pytest.param("POST", GEN, {"json": {"appId": "{app}"}}, 400, "invalid_request", id="post-no-message"),
    pytest.param("POST", GEN, {"json": {"appId": "{app}", "message": 7}}, 400, "invalid_request", id="post-msg-type"),
    pytest.param("POST", GEN, {"json": {"appId": "{app}", "message": "  "}}, 400, "empty_message", id="post-blank"),
    pytest.param(
        "POST", GEN, {"json": {"appId": "{app}", "message": TOO_LONG}}, 413, "message_too_large", id="post-too-long"
    ),
    pytest.param(
        "POST", GEN, {"json": {"appId": "{app}", "message": "hi", "runId": "-x"}}, 400, "invalid_run_id", id="post-rid"
    ),
    pytest.param(
        "POST", GEN, {"json": {"appId": "{app}", "message": "hi", "runId": "{run}"}}, 409, "run_id_taken", id="post-dup"
    ),
    pytest.param("POST", GEN, {"json": {"appId": "nope", "message": "hi"}}, 404, "app_not_found", id="post-no-app"),
    pytest.param("POST", GEN, {"json": {"appId": "{foreign}", "message": "hi"}}, 403, "forbidden", id="post-foreign"),
    pytest.param(
        "POST",
        GEN,
        {"json": {"appId": "{app}", "message": "hi", "onDisconnect": "linger"}},
        400,
        "invalid_request",
        id="post-ondisconnect",
    ),
    pytest.param(
        "POST",
        GEN,
        {"json": {"appId": "{app}", "message": "hi", "multitask": "queue"}},
        400,
        "invalid_request",
        id="post-multitask",
    ),
    pytest.param(
        "POST",
        GEN,
        {"content": b'{"appId": "x", "message": "' + b"x" * DEFAULT_MAX_BODY_BYTES + b'"}', "headers": JSON},
        413,
        "too_large",
        id="post-body-too-large",
    ),
    # stop
    pytest.param("POST", "/app/chat/stop", {"json": {}}, 400, "invalid_request", id="stop-no-runId"),
    pytest.param("POST", "/app/chat/stop", {"content": b"{", "headers": JSON}, 400, "invalid_json", id="stop-bad-json"),
    pytest.param(
        "POST", "/app/chat/stop", {"content": DEEP_ARRAY, "headers": JSON}, 400, "invalid_json", id="stop-deep"
    ),
    pytest.param("POST", "/app/chat/stop", {"json": {"runId": "no pe"}}, 400, "invalid_run_id", id="stop-bad-id"),
    pytest.param("POST", "/chat/stop", {"json": {"runId": "-nope"}}, 400, "invalid_run_id", id="stop-alias-bad-id"),
    pytest.param("POST", "/runs/no%20pe/stop", {}, 400, "invalid_run_id", id="stop-path-bad-id"),
    # runs
    pytest.param("GET", "/runs/nope", {}, 404, "run_not_found", id="run-unknown"),
    pytest.param("GET", "/runs/nope/events", {}, 404, "run_not_found", id="events-unknown"),
    pytest.param(
        "GET",
        "/runs/{run}/events",
        {"headers": {"Last-Event-ID": "garbage"}},
        400,
        "invalid_last_event_id",
        id="lei-malformed",
    ),
    pytest.param(
        "GET",
        "/runs/{run}/events",
        {"headers": {"Last-Event-ID": "{run}:two"}},
        400,
        "invalid_last_event_id",
        id="lei-not-a-number",
    ),
    pytest.param(
        "GET",
        "/runs/{run}/events",
        {"headers": {"Last-Event-ID": "{run}:" + "9" * 5000}},
        400,
        "invalid_last_event_id",
        id="lei-huge-number",
    ),
    pytest.param(
        "GET",
        "/runs/{run}/events",
        {"headers": {"Last-Event-ID": "other-run:1"}},
        400,
        "invalid_last_event_id",
        id="lei-other-run",
    ),
    # files
    pytest.param("GET", "/apps/{app}/files/%2e%2e/x", {}, 400, "invalid_path", id="files-encoded-dotdot"),
    pytest.param("GET", "/apps/{app}/files/..%2fx", {}, 400, "invalid_path", id="files-encoded-slash"),
    pytest.param("GET", "/apps/{app}/files/..%5cx", {}, 400, "invalid_path", id="files-backslash"),
    pytest.param("GET", "/apps/{app}/files/a%00b", {}, 400, "invalid_path", id="files-nul"),
    pytest.param("GET", "/apps/{app}/files/C:/x", {}, 400, "invalid_path", id="files-drive"),
    pytest.param("GET", "/apps/{app}/files/missing.txt", {}, 404, "file_not_found", id="files-missing"),
    pytest.param("GET", "/apps/nope/files", {}, 404, "app_not_found", id="files-no-app"),
    # routing
    pytest.param("GET", "/no/such/route", {}, 404, "not_found", id="unknown-route"),
    pytest.param("PUT", "/apps", {}, 405, "method_not_allowed", id="wrong-method"),
    pytest.param("DELETE", "/healthz", {}, 405, "method_not_allowed", id="wrong-method-healthz"),
]


def fill(value: Any, world: World) -> Any:
    if isinstance(value, str):
        return value.format(app=world.app_id, foreign=world.foreign_app_id, run=world.run_id)
    if isinstance(value, dict):
        return {k: fill(v, world) for k, v in value.items()}
    return value


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "code"), BAD_INPUT)
async def test_bad_input_gets_a_json_4xx_and_the_server_stays_healthy(
    world: World,
    world_client: httpx.AsyncClient,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    response = await world_client.request(method, fill(path, world), **fill(kwargs, world))
    assert_error_body(response, status, code)
    assert (await world_client.get("/healthz")).status_code == 200
    # Nothing was started by a rejected gen request.
    assert world.server.services.manager.active_count == 0


async def test_nul_characters_are_dropped_from_names_and_prompts(client: httpx.AsyncClient) -> None:
    """PostgreSQL's text type refuses NUL (test-pg runs this on it): stored text goes without."""
    created = await client.post("/apps", json={"name": "a\x00b", "initPrompt": "x\x00y", "codeGenType": "html"})
    assert created.status_code == 201, created.text
    app_id = created.json()["id"]
    assert (await client.get(f"/apps/{app_id}")).json()["name"] == "ab"
    seen = await run_to_end(client, gen_url(app_id, "a page\x00 [sim:long_text tokens=3]"))
    assert seen[-1].event == "done", seen[-1]
    [user_turn, _] = (await client.get(f"/apps/{app_id}/messages")).json()
    assert user_turn["content"] == "a page [sim:long_text tokens=3]"


@pytest.mark.parametrize("path", ["../x", "a/../../x", "./../x", "x/..", ".."])
async def test_dotdot_in_file_path_is_refused(world: World, path: str) -> None:
    status, body = await raw_get(world.server.port, f"/apps/{world.app_id}/files/{path}", world.token)
    assert (status, body["error"]) == (400, "invalid_path"), body


@pytest.mark.parametrize("path", ["/etc/passwd", "%2Fetc%2Fpasswd"])
async def test_absolute_looking_file_path_never_reads_the_host(world: World, path: str) -> None:
    status, body = await raw_get(world.server.port, f"/apps/{world.app_id}/files/{path}", world.token)
    assert status in (400, 404), body
    assert "content" not in body


async def test_doubled_slash_means_a_workspace_path(world: World) -> None:
    """Routing collapses `files//etc/passwd` to the workspace path `etc/passwd`: never the host's file."""
    planted = world.server.settings.workspaces_dir / world.app_id / "etc" / "passwd"
    planted.parent.mkdir(parents=True)
    planted.write_text("the workspace's own file\n")
    try:
        status, body = await raw_get(world.server.port, f"/apps/{world.app_id}/files//etc/passwd", world.token)
    finally:
        planted.unlink()
        planted.parent.rmdir()
    assert (status, body["content"]) == (200, "the workspace's own file\n"), body


async def test_message_at_the_limit_is_accepted(world: World, world_client: httpx.AsyncClient) -> None:
    app_id = (await world_client.post("/apps", json={"name": "limit", "codeGenType": "vue_project"})).json()["id"]
    limit = world.server.settings.max_message_chars
    message = SHORT + "x" * (limit - len(SHORT))
    seen = await run_to_end(world_client, gen_url(app_id, f"  {message}  "))  # surrounding blanks do not count
    assert seen[-1].event == "done"


async def test_a_normal_run_completes_after_bad_input(world: World, world_client: httpx.AsyncClient) -> None:
    for method, path, kwargs in (
        ("POST", "/apps", {"content": b"\xff\xfe{", "headers": JSON}),
        ("POST", GEN, {"content": OVER_BODY_LIMIT, "headers": JSON}),
        ("GET", GEN, {"params": {"appId": world.app_id, "message": TOO_LONG}}),
        ("GET", f"/apps/{world.app_id}/files/%2e%2e/%2e%2e/etc/passwd", {}),
    ):
        assert 400 <= (await world_client.request(method, path, **kwargs)).status_code < 500
    app_id = (await world_client.post("/apps", json={"name": "after", "codeGenType": "vue_project"})).json()["id"]
    seen = await run_to_end(world_client, gen_url(app_id, "a counter site [sim:codegen]"))
    assert seen[-1].event == "done"
    assert len((await world_client.get(f"/apps/{app_id}/messages")).json()) == 2
    assert {f["path"] for f in (await world_client.get(f"/apps/{app_id}/files")).json()} == {
        "index.html",
        "style.css",
        "script.js",
    }


# -- X-Request-Id ------------------------------------------------------------------------------


async def test_request_id_is_echoed(client: httpx.AsyncClient, app_id: str) -> None:
    for method, path, kwargs in (
        ("GET", "/apps", {}),
        ("POST", "/apps", {"json": {"name": "x"}}),
        ("GET", f"/apps/{app_id}", {}),
        ("GET", "/healthz", {}),
        ("GET", "/runs/nope", {}),  # errors too
        ("POST", "/apps", {"json": {"name": 1}}),
    ):
        response = await client.request(method, path, headers={"X-Request-Id": "req-echo-1"}, **kwargs)
        assert response.headers.get("x-request-id") == "req-echo-1", (method, path, response.status_code)
    unauthenticated = await client.get("/apps", headers={"X-Request-Id": "req-anon", "Authorization": ""})
    assert unauthenticated.status_code == 401
    assert unauthenticated.headers.get("x-request-id") == "req-anon"
    assert "x-request-id" not in (await client.get("/apps")).headers


async def test_one_clients_request_id_never_reaches_another(client: httpx.AsyncClient, app_id: str) -> None:
    """The 204 of a finished join is a fresh response each time: headers are not shared."""
    await run_to_end(client, gen_url(app_id, f"hi {SHORT}", runId="r-204"))
    for request_id in ("secret-of-alice", None):
        headers = {"Last-Event-ID": "r-204:999999"} | ({"X-Request-Id": request_id} if request_id else {})
        response = await client.get("/runs/r-204/events", headers=headers)
        assert response.status_code == 204
        assert response.headers.get("x-request-id") == request_id


async def test_request_id_becomes_the_run_id(client: httpx.AsyncClient, app_id: str) -> None:
    url = gen_url(app_id, f"hi {SHORT}")
    async with open_stream(client, "GET", url, headers={"X-Request-Id": "req-run-7"}) as (response, events):
        assert response.headers["x-run-id"] == "req-run-7"
        assert response.headers["x-request-id"] == "req-run-7"
        seen = await collect(events)
    assert seen[0].event == "run"
    assert seen[0].data == {"runId": "req-run-7", "appId": app_id}
    assert all(e.id.startswith("req-run-7:") for e in seen)
    assert (await client.get("/runs/req-run-7")).json()["status"] == "completed"

    # An explicit runId wins over the request id.
    url = gen_url(app_id, f"again {SHORT}", runId="r-explicit")
    async with open_stream(client, "GET", url, headers={"X-Request-Id": "req-run-8"}) as (response, events):
        assert response.headers["x-run-id"] == "r-explicit"
        seen = await collect(events)
    assert {e.data["runId"] for e in seen} == {"r-explicit"}
    assert_error_body(await client.get("/runs/req-run-8"), 404, "run_not_found")


async def test_request_id_is_echoed_on_routing_errors(client: httpx.AsyncClient) -> None:
    missing = await client.get("/no/such/route", headers={"X-Request-Id": "req-404"})
    wrong_method = await client.put("/apps", headers={"X-Request-Id": "req-405"})
    assert (missing.status_code, missing.headers.get("x-request-id")) == (404, "req-404")
    assert (wrong_method.status_code, wrong_method.headers.get("x-request-id")) == (405, "req-405")


async def test_gen_with_a_request_id_that_is_no_run_id_still_starts(client: httpx.AsyncClient, app_id: str) -> None:
    for request_id in ("trace 1", "t" * 100):
        async with open_stream(client, "GET", gen_url(app_id, f"hi {SHORT}"), headers={"X-Request-Id": request_id}) as (
            response,
            events,
        ):
            assert response.status_code == 200
            assert (await collect(events))[-1].event == "done"


# -- another user ------------------------------------------------------------------------------


async def test_another_user_gets_403_for_everything_and_cancels_nothing(
    server: ServerThread, client: httpx.AsyncClient, other_client: httpx.AsyncClient, app_id: str
) -> None:
    done = await run_to_end(client, gen_url(app_id, "a site [sim:codegen]", runId="r-done"))
    assert done[-1].event == "done"
    # The simulator takes its scenario from an app's first message: the long run needs an app of its own.
    busy_app = (await client.post("/apps", json={"name": "busy", "codeGenType": "vue_project"})).json()["id"]
    async with open_stream(client, "GET", gen_url(busy_app, f"essay {FAST}", runId="r-mine")) as (_, events):
        await collect(events, until=is_text)
        requests: list[tuple[str, str, dict[str, Any]]] = []
        for app in (app_id, busy_app):
            requests += [
                ("GET", f"/apps/{app}", {}),
                ("GET", f"/apps/{app}/messages", {}),
                ("GET", f"/apps/{app}/files", {}),
                ("GET", f"/apps/{app}/files/index.html", {}),
                ("GET", f"/apps/{app}/files/%2e%2e/x", {}),  # ownership is checked before the path
                ("DELETE", f"/apps/{app}", {}),
                ("GET", gen_url(app, "mine now"), {}),
                ("POST", GEN, {"json": {"appId": app, "message": "mine now"}}),
            ]
        for run_id in ("r-mine", "r-done"):
            requests += [
                ("GET", f"/runs/{run_id}", {}),
                ("GET", f"/runs/{run_id}/events", {}),
                ("GET", f"/runs/{run_id}/events", {"headers": {"Last-Event-ID": f"{run_id}:1"}}),
                ("POST", "/app/chat/stop", {"json": {"runId": run_id}}),
                ("POST", "/chat/stop", {"json": {"runId": run_id}}),
                ("POST", f"/runs/{run_id}/stop", {}),
            ]
        for method, path, kwargs in requests:
            response = await other_client.request(method, path, **kwargs)
            assert_error_body(response, 403, "forbidden")

        # Nothing was cancelled, deleted or started by any of that.
        live = (await client.get("/runs/r-mine")).json()
        assert (live["status"], live["live"], live["stopRequestedAt"]) == ("running", True, None)
        records = server.simulator.recorder.records("r-mine")
        assert len(records) == 1
        assert records[0].is_open
        more = await collect(events, until=lambda e: is_text(e) and e.seq >= 10)
        assert more[-1].event == "message"
        assert (await client.post("/runs/r-mine/stop")).status_code == 202
        rest = await collect(events)
    assert rest[-1].data == {"reason": "user_stop", "mode": "immediate", "runId": "r-mine"}
    assert (await client.get("/runs/r-done")).json()["status"] == "completed"
    assert len((await client.get(f"/apps/{app_id}/messages")).json()) == 2
    assert {f["path"] for f in (await client.get(f"/apps/{app_id}/files")).json()} == {
        "index.html",
        "style.css",
        "script.js",
    }
    assert (await client.get(f"/apps/{busy_app}")).status_code == 200
    assert (await other_client.get("/apps")).json() == []


@pytest.mark.parametrize("value", ["r1:²", "r1:٣", "r1:" + "9" * 19, "r1:-1", "r1:", ":1", "r1"])
def test_last_event_id_parsing_refuses_what_int_would_choke_on(value: str) -> None:
    with pytest.raises(BadRequest):
        parse_last_event_id(value, "r1")
    assert parse_last_event_id("r1:42", "r1") == 42
    assert parse_last_event_id(None, "r1") == 0
