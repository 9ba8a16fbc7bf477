"""The authorization matrix: every route × {owner, other user, no token, bad token, token in the
query string}, with the status each must answer, and no owner data in any answer to anyone else.

The routes come from the app's own route table: a new endpoint without a row here fails
``test_every_route_has_a_matrix_row``. Also here: tokens are stored and looked up only as hashes,
secrets are compared in constant time, and neither a user's token nor the upstream API key shows
up in the logs, in error bodies or in the events of a run that fails upstream.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from litestar.routes import ASGIRoute, HTTPRoute, WebSocketRoute
from sqlalchemy import event, select

from app.logs import RedactSecrets
from app.settings import BuildSettings, LLMSettings, Settings
from app.store.models import User
from app.store.repo import hash_token
from app.workspace.preview_links import PreviewLinks
from tests.support import HANG_TIMEOUT_S, ServerThread, collect, gen_url, open_stream

FRESH = httpx.Limits(max_keepalive_connections=0)
OWNER, OTHER, NONE, BAD, QUERY = "owner", "other", "no-token", "bad-token", "query-token"
# The owner last: a destructive request (delete, revert) by the owner must not hide what the
# others' attempts did or did not do.
PRINCIPALS = (NONE, BAD, QUERY, OTHER, OWNER)
WS_OPEN, WS_REFUSED = 101, 4401  # the socket serves the user / the server closes it with 4401

# Markers of the owner's data: none may reach anyone but the owner.
NAME_MARK = "OWNER-APP-NAME-7f3a"
PROMPT_MARK = "OWNER-PROMPT-91c2"
FILE_MARK = "OWNER-FILE-CONTENT-4d8e"
USER_MARK = "owner-user-5e0b"
BAD_TOKEN = "rf_" + "A" * 43  # well-formed, unknown


@dataclass
class World:
    server: ServerThread
    owner_token: str
    other_token: str
    owner_id: str
    app_id: str  # owner's multi_file app with a completed run, a checkpoint and a file
    scratch_id: str  # owner's app for the runs the matrix starts
    run_id: str  # owner's completed code run on app_id
    chat_id: str  # owner's completed /v1 chat run
    key: str  # the preview-link key of app_id
    secrets: list[str] = field(default_factory=list)  # what non-owners must never see

    def headers(self, principal: str) -> dict[str, str]:
        token = {OWNER: self.owner_token, OTHER: self.other_token, BAD: BAD_TOKEN}.get(principal)
        return {"Authorization": f"Bearer {token}"} if token else {}


def _settings(base: Path, llm: LLMSettings | None = None) -> Settings:
    return Settings(
        data_dir=base / "data",
        llm=llm or LLMSettings(max_retries=0, timeout_s=30.0),
        simulator_pace_ms=2.0,
        sse_ping_s=5.0,
        gc_freeze=False,
        build=BuildSettings(enabled=False),
    )


async def _sse_to_end(http: httpx.AsyncClient, method: str, url: str, **kwargs: Any) -> list[Any]:
    async with open_stream(http, method, url, **kwargs) as (response, events):
        assert response.status_code == 200, response.text
        return await collect(events)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    server = ServerThread(_settings(tmp_path_factory.mktemp("authz"))).start()
    try:
        owner_token = server.add_user(USER_MARK)
        other_token = server.add_user("mallory")

        async def prepare() -> World:
            async with httpx.AsyncClient(
                base_url=server.url, headers={"Authorization": f"Bearer {owner_token}"}, timeout=HANG_TIMEOUT_S
            ) as http:
                created = (await http.post("/apps", json={"name": NAME_MARK, "codeGenType": "multi_file"})).json()
                scratch = (
                    await http.post("/apps", json={"name": f"{NAME_MARK} scratch", "codeGenType": "html"})
                ).json()
                workspace = server.settings.workspaces_dir / created["id"]
                workspace.mkdir(parents=True)
                (workspace / "notes.txt").write_text(FILE_MARK)  # before the run: in its checkpoint
                prompt = f"a click counter {PROMPT_MARK}"
                seen = await _sse_to_end(http, "GET", gen_url(created["id"], prompt, runId="r-owner"))
                assert seen[-1].event == "done", seen[-1]
                chat = await http.post(
                    "/v1/chat/completions",
                    json={
                        "requestId": "c-owner",
                        "messages": [{"role": "user", "content": "hi [sim:long_text tokens=3]"}],
                    },
                )
                assert chat.status_code == 200, chat.text
            key = created["previewLink"].strip("/").split("/")[2]
            return World(
                server,
                owner_token,
                other_token,
                created["ownerId"],
                created["id"],
                scratch["id"],
                "r-owner",
                "c-owner",
                key,
            )

        world = asyncio.run(prepare())
        world.secrets = [NAME_MARK, PROMPT_MARK, FILE_MARK, USER_MARK, world.owner_id, owner_token, world.key]
        yield world
    finally:
        server.stop()


# -- the matrix ----------------------------------------------------------------------------------

Request = tuple[str, dict[str, Any]]  # (url, httpx request kwargs)


@dataclass(frozen=True)
class Row:
    expected: dict[str, int]  # principal -> status
    build: Callable[[World, httpx.AsyncClient], Awaitable[Request]]
    # False where the answer is the owner's data to anyone by design (a preview link is the
    # capability), or where it carries nothing of the owner's.
    owner_scoped: bool = True


def protected(owner: int, other: int = 403) -> dict[str, int]:
    """A route that needs a user: 401 without one (a token in the query string is no sign-in)."""
    return {OWNER: owner, OTHER: other, NONE: 401, BAD: 401, QUERY: 401}


def public(status: int = 200, query: int | None = None) -> dict[str, int]:
    return {OWNER: status, OTHER: status, NONE: status, BAD: status, QUERY: status if query is None else query}


def at(url: str, **kwargs: Any) -> Callable[[World, httpx.AsyncClient], Awaitable[Request]]:
    async def build(w: World, _: httpx.AsyncClient) -> Request:
        fields = {"app": w.app_id, "scratch": w.scratch_id, "run": w.run_id, "chat": w.chat_id, "key": w.key}
        filled = json.loads(json.dumps(kwargs).replace("{run}", w.run_id).replace("{chat}", w.chat_id))
        filled = json.loads(json.dumps(filled).replace("{scratch}", w.scratch_id).replace("{app}", w.app_id))
        return url.format(**fields), filled

    return build


async def throwaway_app(w: World, owner: httpx.AsyncClient) -> Request:
    """DELETE gets an app of its own each time (the owner's cell deletes it)."""
    created = await owner.post("/apps", json={"name": f"{NAME_MARK} doomed"})
    return f"/apps/{created.json()['id']}", {}


async def run_checkpoint_diff(w: World, owner: httpx.AsyncClient) -> Request:
    """The diff of the world's run: its checkpoint's sha, as the owner lists it."""
    found = (await owner.get(f"/apps/{w.app_id}/checkpoints")).json()
    sha = next(c["sha"] for c in found if c["runId"] == w.run_id and c["kind"] == "run")
    return f"/apps/{w.app_id}/checkpoints/{sha}/diff", {}


GEN = {"appId": "{scratch}", "message": f"a page {PROMPT_MARK}"}
CHAT = {"messages": [{"role": "user", "content": f"hi {PROMPT_MARK} [sim:long_text tokens=3]"}]}

MATRIX: dict[tuple[str, str], Row] = {
    # Public: the page (signs in with ?token=, which is the one place a query token is meant
    # for), health, metrics, the schema and the page's modules.
    ("GET", "/"): Row(public(200, query=303), at("/")),
    ("GET", "/healthz"): Row(public(), at("/healthz")),
    ("GET", "/readyz"): Row(public(), at("/readyz")),
    ("GET", "/metrics"): Row(public(), at("/metrics")),
    ("GET", "/static/{file_path:path}"): Row(public(), at("/static/app.js")),
    ("GET", "/schema"): Row(public(), at("/schema")),
    ("GET", "/schema/swagger"): Row(public(), at("/schema/swagger")),
    ("GET", "/schema/rapidoc"): Row(public(), at("/schema/rapidoc")),
    ("GET", "/schema/redoc"): Row(public(), at("/schema/redoc")),
    ("GET", "/schema/elements"): Row(public(), at("/schema/elements")),
    ("GET", "/schema/openapi.json"): Row(public(), at("/schema/openapi.json")),
    ("GET", "/schema/openapi.yaml"): Row(public(), at("/schema/openapi.yaml")),
    ("GET", "/schema/openapi.yml"): Row(public(), at("/schema/openapi.yml")),
    ("GET", "/schema/oauth2-redirect.html"): Row(public(), at("/schema/oauth2-redirect.html")),
    ("GET", "/schema/{path:str}"): Row(public(404), at("/schema/no-such-renderer")),
    # Signed in, nothing owned: another user gets their own answer.
    ("GET", "/templates"): Row(protected(200, 200), at("/templates")),
    ("GET", "/apps"): Row(protected(200, 200), at("/apps")),
    ("POST", "/apps"): Row(protected(201, 201), at("/apps", json={"name": "new"})),
    ("GET", "/v1/models"): Row(protected(200, 200), at("/v1/models")),
    ("POST", "/v1/chat/completions"): Row(protected(200, 200), at("/v1/chat/completions", json=CHAT)),
    # The owner's apps.
    ("GET", "/apps/{app_id:str}"): Row(protected(200), at("/apps/{app}")),
    ("DELETE", "/apps/{app_id:str}"): Row(protected(204), throwaway_app),
    ("GET", "/apps/{app_id:str}/messages"): Row(protected(200), at("/apps/{app}/messages")),
    ("GET", "/apps/{app_id:str}/files"): Row(protected(200), at("/apps/{app}/files")),
    ("GET", "/apps/{app_id:str}/files/{path:path}"): Row(protected(200), at("/apps/{app}/files/notes.txt")),
    ("GET", "/apps/{app_id:str}/checkpoints"): Row(protected(200), at("/apps/{app}/checkpoints")),
    ("GET", "/apps/{app_id:str}/checkpoints/{sha:str}/diff"): Row(protected(200), run_checkpoint_diff),
    ("GET", "/apps/{app_id:str}/download"): Row(protected(200), at("/apps/{app}/download")),
    ("GET", "/apps/{app_id:str}/preview"): Row(protected(302), at("/apps/{app}/preview")),
    ("GET", "/apps/{app_id:str}/preview/{path:path}"): Row(protected(302), at("/apps/{app}/preview/notes.txt")),
    ("POST", "/apps/{app_id:str}/revert"): Row(protected(200), at("/apps/{app}/revert", json={"runId": "{run}"})),
    # A preview link is its own capability: the key, not a token (wrong keys: see below).
    ("GET", "/preview/{app_id:str}/{key:str}"): Row(public(302), at("/preview/{app}/{key}"), owner_scoped=False),
    ("GET", "/preview/{app_id:str}/{key:str}/{path:path}"): Row(
        public(200), at("/preview/{app}/{key}/notes.txt"), owner_scoped=False
    ),
    # The owner's runs.
    ("GET", "/app/chat/gen/code"): Row(protected(200), at("/app/chat/gen/code", params=GEN)),
    ("POST", "/app/chat/gen/code"): Row(protected(200), at("/app/chat/gen/code", json=GEN)),
    ("POST", "/app/chat/stop"): Row(protected(200), at("/app/chat/stop", json={"runId": "{run}"})),
    ("POST", "/chat/stop"): Row(protected(200), at("/chat/stop", json={"runId": "{run}"})),
    ("POST", "/runs/{run_id:str}/stop"): Row(protected(200), at("/runs/{run}/stop")),
    ("GET", "/runs/{run_id:str}"): Row(protected(200), at("/runs/{run}")),
    ("GET", "/runs/{run_id:str}/events"): Row(protected(200), at("/runs/{run}/events")),
    ("POST", "/v1/interrupt"): Row(protected(200), at("/v1/interrupt", json={"requestId": "{chat}"})),
    # The WebSocket takes ?token= (browsers cannot set its headers): there it is a sign-in.
    ("WS", "/ws/agent"): Row(
        {OWNER: WS_OPEN, OTHER: WS_OPEN, NONE: WS_REFUSED, BAD: WS_REFUSED, QUERY: WS_OPEN}, at("/ws/agent")
    ),
}


def route_keys(server: ServerThread) -> set[tuple[str, str]]:
    keys: set[tuple[str, str]] = set()
    for route in server.app.routes:
        if isinstance(route, WebSocketRoute):
            keys.add(("WS", route.path))
        elif isinstance(route, ASGIRoute):
            keys.add(("POST", route.path))  # /v1/chat/completions: a plain ASGI handler, POST only
        elif isinstance(route, HTTPRoute):
            keys |= {(method, route.path) for method in route.methods if method not in ("OPTIONS", "HEAD")}
        else:  # pragma: no cover - a new kind of route needs a rule here
            raise AssertionError(f"unknown route type {type(route).__name__} at {route.path}")
    return keys


def test_every_route_has_a_matrix_row(world: World) -> None:
    routes = route_keys(world.server)
    assert routes - MATRIX.keys() == set(), "routes without an authorization matrix row"
    assert MATRIX.keys() - routes == set(), "matrix rows for routes that do not exist"
    assert len(MATRIX) * len(PRINCIPALS) >= 5 * 40


def _with_query_token(url: str, kwargs: dict[str, Any], token: str) -> tuple[str, dict[str, Any]]:
    params = dict(kwargs.get("params") or {})
    params["token"] = token
    return url, {**kwargs, "params": params}


async def _http_cell(
    w: World, http: httpx.AsyncClient, method: str, principal: str, request: Request
) -> tuple[int, str, httpx.Headers]:
    """One request; its status, its body as text, its headers."""
    url, kwargs = request
    if principal == QUERY:
        url, kwargs = _with_query_token(url, kwargs, w.owner_token)
    headers = w.headers(principal)
    if url.startswith("/app/chat/gen/code") and principal == OWNER:
        # The owner's run: read it to its end (the next cell must not supersede it mid-way).
        async with open_stream(http, method, url, headers=headers, **kwargs) as (response, events):
            seen = await collect(events)
        assert seen[-1].event == "done", seen[-1]
        return response.status_code, json.dumps([e.data for e in seen]), response.headers
    response = await http.request(method, url, headers=headers, follow_redirects=False, **kwargs)
    if response.headers.get("content-type", "").startswith("application/zip"):
        return response.status_code, response.content.decode("latin-1"), response.headers
    return response.status_code, response.text, response.headers


async def _ws_cell(w: World, principal: str) -> tuple[int, list[dict[str, Any]]]:
    url = w.server.url.replace("http", "ws", 1) + "/ws/agent"
    if principal == QUERY:
        url += f"?token={w.owner_token}"
    seen: list[dict[str, Any]] = []
    probe = {"type": "REQUEST", "requestId": f"ws-{principal}", "payload": {"appId": w.scratch_id, "message": "x"}}
    try:
        async with websockets.connect(
            url, additional_headers=w.headers(principal), open_timeout=HANG_TIMEOUT_S
        ) as socket:
            # A refused socket may be closed before these go out: what it sent first is still read.
            with contextlib.suppress(websockets.ConnectionClosed):
                await socket.send(json.dumps({"type": "INTERRUPT", "requestId": w.run_id}))
                await socket.send(json.dumps(probe))
            async with asyncio.timeout(HANG_TIMEOUT_S):
                while len(seen) < 2:
                    seen.append(json.loads(await socket.recv()))
    except websockets.ConnectionClosed as closed:
        return (closed.rcvd.code if closed.rcvd is not None else -1), seen
    return WS_OPEN, seen


def _assert_ws_cell(w: World, principal: str, code: int, seen: list[dict[str, Any]]) -> None:
    if code == WS_REFUSED:
        assert [m["type"] for m in seen] == ["ERROR"], seen
        assert seen[0]["code"] == "unauthorized", seen
        return
    answers = {m["type"]: m for m in seen}
    if principal in (OWNER, QUERY):
        assert answers["INTERRUPT_ACK"]["status"] == "ALREADY_FINISHED", seen
        assert answers["ACK"]["requestId"] == f"ws-{principal}", seen  # the run started (closing stops it)
    else:  # another user learns nothing about the owner's run, and cannot run on the app
        assert answers["INTERRUPT_ACK"]["status"] == "NOT_FOUND", seen
        assert answers["ERROR"]["code"] == "forbidden", seen


@pytest.mark.parametrize("key", list(MATRIX), ids=[f"{m} {p}" for m, p in MATRIX])
async def test_authorization_matrix(world: World, key: tuple[str, str]) -> None:
    method, _ = key
    row = MATRIX[key]
    mismatches: list[str] = []
    async with (
        httpx.AsyncClient(base_url=world.server.url, timeout=HANG_TIMEOUT_S, limits=FRESH) as http,
        httpx.AsyncClient(
            base_url=world.server.url, headers=world.headers(OWNER), timeout=HANG_TIMEOUT_S, limits=FRESH
        ) as owner,
    ):
        messages_before = (await owner.get(f"/apps/{world.app_id}/messages")).json()
        checkpoints_before = len((await owner.get(f"/apps/{world.app_id}/checkpoints")).json())
        for principal in PRINCIPALS:
            expected = row.expected[principal]
            if method == "WS":
                status, seen = await _ws_cell(world, principal)
                text = json.dumps(seen)
                if status == expected:
                    _assert_ws_cell(world, principal, status, seen)
            else:
                request = await row.build(world, owner)
                status, text, headers = await _http_cell(world, http, method, principal, request)
                http.cookies.clear()  # the login cell's cookie must not sign in the next one
                if status == 401:  # a JSON error (OpenAI's shape on /v1)
                    body = json.loads(text)
                    code = body["error"]["code"] if key[1].startswith("/v1") else body["error"]
                    assert code in ("unauthorized", "invalid_token", "invalid_api_key"), body
                    assert code == ("unauthorized" if principal in (NONE, QUERY) else code), body
                if principal != OWNER and row.owner_scoped:
                    text += json.dumps({k: v for k, v in headers.items() if k != "set-cookie"})
            if status != expected:
                mismatches.append(f"{principal}: expected {expected}, got {status}: {text[:200]}")
            if principal != OWNER and row.owner_scoped:
                leaked = [secret for secret in world.secrets if secret in text]
                if principal == QUERY and method == "GET" and key[1] == "/":
                    leaked = [s for s in leaked if s not in (world.owner_token, USER_MARK)]  # the login itself
                assert not leaked, f"{principal} got the owner's {leaked} from {method} {key[1]}: {text[:300]}"
            if principal == OTHER:
                # Nothing a refused request touched changed (the owner's cell comes after).
                assert (await owner.get(f"/apps/{world.app_id}/messages")).json() == messages_before
                assert len((await owner.get(f"/apps/{world.app_id}/checkpoints")).json()) == checkpoints_before
    assert not mismatches, "\n".join(mismatches)


async def test_positive_controls_the_owner_sees_the_markers(world: World) -> None:
    """The leak checks above look for markers that really are in the owner's answers."""
    async with httpx.AsyncClient(base_url=world.server.url, headers=world.headers(OWNER), limits=FRESH) as owner:
        assert NAME_MARK in (await owner.get(f"/apps/{world.app_id}")).text
        assert PROMPT_MARK in (await owner.get(f"/apps/{world.app_id}/messages")).text
        assert FILE_MARK in (await owner.get(f"/apps/{world.app_id}/files/notes.txt")).text
        assert world.key in (await owner.get("/apps")).text
        assert world.owner_id in (await owner.get(f"/apps/{world.app_id}")).text


async def test_preview_link_with_a_wrong_key_reveals_nothing(world: World) -> None:
    async with httpx.AsyncClient(base_url=world.server.url, headers=world.headers(OWNER), limits=FRESH) as owner:
        other_app = (await owner.post("/apps", json={"name": "another"})).json()
        other_key = other_app["previewLink"].strip("/").split("/")[2]
    wrong = [other_key, world.key[:-1] + ("0" if world.key[-1] != "0" else "1"), world.key.upper(), "", "x" * 32]
    async with httpx.AsyncClient(base_url=world.server.url, limits=FRESH) as anonymous:
        for key in wrong:
            for path in ("notes.txt", ""):
                response = await anonymous.get(f"/preview/{world.app_id}/{key}/{path}", follow_redirects=False)
                assert FILE_MARK not in response.text
                assert response.status_code in (404, 302, 307), (key, response.status_code)
                if response.status_code == 404:
                    assert response.json()["error"] in ("preview_not_found", "not_found")


# -- tokens: hashed, compared in constant time ---------------------------------------------------


async def test_tokens_are_stored_and_looked_up_only_as_hashes(world: World) -> None:
    services = world.server.services

    async def rows() -> dict[str, str]:
        async with services.db.read() as session:
            return {row.name: row.token_hash for row in await session.execute(select(User.name, User.token_hash))}

    stored = await world.server.acall(rows())
    assert stored[USER_MARK] == hashlib.sha256(world.owner_token.encode()).hexdigest() == hash_token(world.owner_token)
    assert world.owner_token not in stored.values()
    # The in-memory cache is keyed by the hash too: the raw token is kept nowhere.
    assert world.owner_token not in repr(services._auth_cache)

    # Every statement the database runs while a new token signs in carries only its hash.
    fresh = world.server.add_user("fresh")
    statements: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        statements.append(f"{statement} {parameters!r}")

    engine = services.db.engine.sync_engine
    event.listen(engine, "before_cursor_execute", record)
    try:
        async with httpx.AsyncClient(base_url=world.server.url, limits=FRESH) as http:
            assert (await http.get("/apps", headers={"Authorization": f"Bearer {fresh}"})).status_code == 200
            assert (await http.get("/apps", headers={"Authorization": f"Bearer {fresh}x"})).status_code == 401
    finally:
        event.remove(engine, "before_cursor_execute", record)
    assert statements, "no database statement seen: the lookup went elsewhere"
    assert all(fresh not in statement for statement in statements), statements
    assert any(hash_token(fresh) in statement for statement in statements), statements


def test_preview_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """A token is found by an equality lookup of its SHA-256 (nothing about the token itself is
    learnt from timing); the one secret compared as a string, a preview-link key, goes through
    hmac.compare_digest."""
    links = PreviewLinks(b"k" * 32)
    calls: list[tuple[str, str]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    key = links.key("app1")
    assert links.valid("app1", key)
    assert not links.valid("app1", key[:-1] + "x")
    assert not links.valid("app2", key)
    assert len(calls) == 3


# -- no secret in logs, error bodies or events ---------------------------------------------------

UPSTREAM_KEY = "sk-UPSTREAM-SECRET-0c9b1e77d2"


class Captured(logging.Handler):
    """The server's records: those of its threads (the test's own clients log in MainThread)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.threadName != "MainThread":
            self.lines.append(self.format(record))


@contextlib.contextmanager
def capture_logs() -> Iterator[Captured]:
    """The server's log at the production level (INFO), the access log included, with the
    production filters on."""
    handler = Captured()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    root, access, uvicorn = logging.getLogger(), logging.getLogger("uvicorn.access"), logging.getLogger("uvicorn")
    saved = (root.level, access.level, uvicorn.level)
    redact = RedactSecrets()  # as app/logs.configure_logging installs it
    access.addFilter(redact)
    for logger in (root, access, uvicorn):
        logger.addHandler(handler)
    root.setLevel(logging.INFO)
    access.setLevel(logging.INFO)
    uvicorn.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        for logger in (root, access, uvicorn):
            logger.removeHandler(handler)
        access.removeFilter(redact)
        root.setLevel(saved[0])
        access.setLevel(saved[1])
        uvicorn.setLevel(saved[2])


@contextlib.asynccontextmanager
async def echoing_upstream() -> AsyncIterator[tuple[str, list[bytes]]]:
    """An OpenAI-like provider that refuses every request with a 401 quoting the key it got (as
    providers do, if masked), for the chat and models endpoints alike."""
    heads: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        heads.append(head)
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":")[1])
        await reader.readexactly(length)
        auth = next((ln for ln in head.split(b"\r\n") if ln.lower().startswith(b"authorization:")), b"")
        key = auth.split(b" ")[-1].decode()
        body = json.dumps(
            {
                "error": {
                    "message": f"Incorrect API key provided: {key}",
                    "type": "invalid_request_error",
                    "code": "invalid_api_key",
                }
            }
        ).encode()
        writer.write(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\n"
            + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
            + body
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1", heads
    finally:
        server.close()
        await server.wait_closed()


async def test_no_token_or_upstream_key_in_logs_errors_or_events(tmp_path: Path) -> None:
    async with echoing_upstream() as (base_url, heads):
        llm = LLMSettings(base_url=base_url, api_key=UPSTREAM_KEY, max_retries=0, timeout_s=30.0)
        server = ServerThread(_settings(tmp_path, llm))  # its uvicorn.Config sets the log levels
        with capture_logs() as logs:
            server.start()
            try:
                token = server.add_user("alice")
                seen_by_clients, preview_key = await _exercise(server, token)
            finally:
                server.stop()
    assert any(UPSTREAM_KEY.encode() in head for head in heads), "the upstream never got the key: no test"
    log_text = "\n".join(logs.lines)
    assert "GET /apps" in log_text or "/apps" in log_text, "no access log captured: no test"
    assert "/preview/" in log_text, "the preview link's request is not in the access log: no test"
    assert "Incorrect API key provided: [redacted]" in dict(seen_by_clients)["/v1 error body"]
    assert preview_key not in log_text, "a preview link's key (a capability) in the access log"
    for secret in (token, UPSTREAM_KEY, hash_token(token)):
        assert secret not in log_text, f"{secret[:8]}… in the logs"
        for what, text in seen_by_clients:
            if secret == token and what == "login cookie":
                continue
            assert secret not in text, f"{secret[:8]}… in {what}: {text[:300]}"


async def _exercise(server: ServerThread, token: str) -> tuple[list[tuple[str, str]], str]:
    """Requests that carry the token every way, and fail upstream every way: what clients saw,
    and the key of the preview link opened."""
    seen: list[tuple[str, str]] = []
    auth = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, timeout=HANG_TIMEOUT_S, limits=FRESH) as http:
        app_id = (await http.post("/apps", json={"name": "x", "codeGenType": "vue_project"}, headers=auth)).json()["id"]
        async with httpx.AsyncClient(base_url=server.url, timeout=HANG_TIMEOUT_S, limits=FRESH) as browser:
            login = await browser.get("/", params={"token": token}, follow_redirects=False)
        assert login.status_code == 303
        seen.append(("login cookie", login.headers.get("set-cookie", "")))
        # A run that fails upstream: its events, and its record.
        async with open_stream(http, "GET", gen_url(app_id, "build it", runId="r-fail"), headers=auth) as (
            response,
            events,
        ):
            assert response.status_code == 200
            stream = await collect(events)
        assert stream[-1].event == "failed", stream[-1]
        seen.append(("SSE events", json.dumps([e.data for e in stream])))
        seen.append(("run record", (await http.get("/runs/r-fail", headers=auth)).text))
        # /v1 relays the provider's own error body, and its model list.
        chat = await http.post(
            "/v1/chat/completions", headers=auth, json={"messages": [{"role": "user", "content": "hi"}]}
        )
        assert chat.status_code == 401, chat.text
        seen.append(("/v1 error body", chat.text))
        streamed = await http.post(
            "/v1/chat/completions", headers=auth, json={"stream": True, "messages": [{"role": "user", "content": "hi"}]}
        )
        seen.append(("/v1 streamed error", streamed.text))
        models = await http.get("/v1/models", headers=auth)
        seen.append(("/v1/models error", models.text))
        # The token where it does not belong: refused, and not echoed or logged.
        for response in (
            await http.get(gen_url(app_id, "x", token=token)),
            await http.get("/apps", params={"token": token}),
            await http.get("/apps", headers={"Authorization": f"Bearer {token}x"}),
            await http.get("/", params={"token": token + "x"}),
            await http.post("/v1/chat/completions", headers={"Authorization": f"Bearer {token}x"}, json={}),
        ):
            assert response.status_code == 401, response.text
            seen.append((f"401 for {response.request.url.path}", response.text + json.dumps(dict(response.headers))))
        # The WebSocket with ?token=: a run that fails upstream there too.
        url = server.url.replace("http", "ws", 1) + f"/ws/agent?token={token}"
        async with websockets.connect(url, open_timeout=HANG_TIMEOUT_S) as socket:
            await socket.send(
                json.dumps({"type": "REQUEST", "requestId": "w-fail", "payload": {"appId": app_id, "message": "x"}})
            )
            frames: list[str] = []
            async with asyncio.timeout(HANG_TIMEOUT_S):
                while not frames or json.loads(frames[-1])["type"] not in ("DONE", "FAILED", "INTERRUPTED", "ERROR"):
                    frames.append(str(await socket.recv()))
        assert json.loads(frames[-1])["type"] == "FAILED", frames
        seen.append(("WebSocket frames", "\n".join(frames)))
        # A preview link in the access log is a capability too.
        link = (await http.get(f"/apps/{app_id}", headers=auth)).json()["previewLink"]
        await http.get(link + "index.html")
    return seen, link.strip("/").split("/")[2]
