"""Sign-in: bearer tokens, the login URL and its HttpOnly cookie, and tokens stored only as hashes."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import select

from app.store.db import Database
from app.store.models import User
from tests.support import ServerThread, collect, gen_url, open_stream

COOKIE = "runforge_token"
# A connection per request. The test server's sockets keep Nagle on, so every response on a reused
# (keep-alive) connection waits ~40 ms for a delayed ACK; a fresh connection is answered at once.
FRESH = httpx.Limits(max_keepalive_connections=0)


@pytest.fixture
async def anonymous(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=server.url, timeout=30.0, limits=FRESH) as http:
        yield http


def assert_401(response: httpx.Response, code: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert (body["status"], body["error"]) == (401, code)
    assert body["message"]


async def test_api_needs_a_valid_token(anonymous: httpx.AsyncClient, token: str, app_id: str) -> None:
    requests = (
        ("GET", "/apps", {}),
        ("POST", "/apps", {"json": {"name": "x"}}),
        ("GET", f"/apps/{app_id}", {}),
        ("GET", f"/apps/{app_id}/files", {}),
        ("GET", gen_url(app_id, "hi"), {}),
        ("POST", "/app/chat/gen/code", {"json": {"appId": app_id, "message": "hi"}}),
        ("POST", "/app/chat/stop", {"json": {"runId": "r"}}),
        ("GET", "/runs/r", {}),
        ("GET", "/runs/r/events", {}),
    )
    for method, path, kwargs in requests:
        assert_401(await anonymous.request(method, path, **kwargs), "unauthorized")
        bad = {"Authorization": "Bearer not-a-token"}
        assert_401(await anonymous.request(method, path, headers=bad, **kwargs), "invalid_token")
    for headers in ({"Authorization": f"Bearer {token}x"}, {"Cookie": f"{COOKIE}=not-a-token"}):
        assert_401(await anonymous.get("/apps", headers=headers), "invalid_token")
        assert_401(await anonymous.get(gen_url(app_id, "hi"), headers=headers), "invalid_token")
    # A malformed Authorization header is no sign-in either.
    assert_401(await anonymous.get("/apps", headers={"Authorization": token}), "unauthorized")
    assert_401(await anonymous.get("/apps", headers={"Authorization": f"Basic {token}"}), "unauthorized")

    mine = await anonymous.get("/apps", headers={"Authorization": f"Bearer {token}"})
    assert mine.status_code == 200
    assert [a["id"] for a in mine.json()] == [app_id]
    assert (await anonymous.get("/apps", headers={"Authorization": f"bearer {token}"})).status_code == 200
    # Nothing was created by the rejected requests.
    assert len(mine.json()) == 1


async def test_login_url_sets_an_http_only_cookie_that_signs_in(
    server: ServerThread, anonymous: httpx.AsyncClient, token: str
) -> None:
    login = await anonymous.get("/", params={"token": token})
    assert login.status_code == 303
    assert login.headers["location"] == "/"  # the token leaves the address bar
    assert token not in login.headers["location"]
    set_cookie = login.headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}={token};")
    assert "httponly" in set_cookie.lower()
    assert login.cookies[COOKIE] == token

    # A browser now has the cookie and nothing else: no Authorization header, ever.
    async with httpx.AsyncClient(base_url=server.url, cookies={COOKIE: token}, timeout=30.0, limits=FRESH) as browser:
        home = await browser.get("/")
        assert home.status_code == 200
        assert '<body data-user="alice">' in home.text  # the chat page, for the signed-in user
        created = await browser.post("/apps", json={"name": "from the browser"})
        assert created.status_code == 201
        app_id = created.json()["id"]
        # EventSource cannot send headers: the SSE stream authenticates with the cookie alone.
        async with open_stream(browser, "GET", gen_url(app_id, "hi [sim:long_text tokens=4]")) as (response, events):
            assert response.status_code == 200
            assert "authorization" not in response.request.headers
            seen = await collect(events)
        assert seen[0].event == "run"
        assert seen[-1].event == "done"
        run_id = seen[0].data["runId"]
        assert (await browser.get(f"/runs/{run_id}")).json()["status"] in ("completed", "running")
        assert len((await browser.get(f"/apps/{app_id}/messages")).json()) == 2


async def test_bad_login_url_is_refused_without_a_cookie(anonymous: httpx.AsyncClient, token: str) -> None:
    for bad in ("not-a-token", f"{token}x", ""):
        response = await anonymous.get("/", params={"token": bad})
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("text/html")
        assert "not valid" in response.text
        assert "set-cookie" not in response.headers
    assert COOKIE not in anonymous.cookies


async def test_home_page_signed_out(anonymous: httpx.AsyncClient) -> None:
    response = await anonymous.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "signed out" in response.text.lower()
    assert "Signed in as" not in response.text


async def _token_hashes(db: Database) -> dict[str, str]:
    async with db.read() as session:
        rows = await session.execute(select(User.name, User.token_hash))
        return {row.name: row.token_hash for row in rows}


async def test_tokens_are_stored_hashed(server: ServerThread, token: str) -> None:
    other = server.add_user("bob")
    data_dir = server.settings.data_dir
    rows = await server.acall(_token_hashes(server.services.db))
    assert rows == {
        "alice": hashlib.sha256(token.encode()).hexdigest(),
        "bob": hashlib.sha256(other.encode()).hexdigest(),
    }
    # Not anywhere on disk either: not in the database file, its WAL, or anything else.
    for path in data_dir.rglob("*"):
        if path.is_file():
            content = path.read_bytes()
            assert token.encode() not in content, path
            assert other.encode() not in content, path


async def test_tokens_can_be_passed_as_command_line_values(server: ServerThread) -> None:
    """urlsafe base64 may start with "-", which argparse takes for an option: tokens never do."""
    tokens = [server.add_user(f"user{i}") for i in range(64)]
    assert all(token.startswith("rf_") for token in tokens)
