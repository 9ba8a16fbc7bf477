"""The workspace API over real sockets: the live preview, the zip download, checkpoints and revert.

Paths that must reach the server byte for byte (``..``, backslashes) go over a raw socket: httpx
removes dot segments from a URL, even from an explicit ``raw_path``.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from app.settings import BuildSettings, LLMSettings, Settings
from tests.support import HANG_TIMEOUT_S, Event, ServerThread, collect, gen_url, open_stream
from tests.workspace_kit import HARDLINK_HOSTILE, HOSTILE, SYMLINK_HOSTILE, UNICODE_HOSTILE, make_workspace

SECRET = "RUNFORGE-SECRET-5b1e9c"  # in every file a preview must never serve
# A connection per request: on a reused (keep-alive) connection every response waits ~40 ms for a
# delayed ACK (see tests/test_api.py), and these tests make many requests.
FRESH = httpx.Limits(max_keepalive_connections=0)
SHA = re.compile(r"[0-9a-f]{40}")
JS = "text/javascript; charset=utf-8"
HTML = "text/html; charset=utf-8"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


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


def assert_error_body(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """Every error is JSON of one shape (as in tests/test_api.py)."""
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
    return body


async def run_to_done(client: httpx.AsyncClient, app_id: str, message: str, run_id: str) -> Event:
    """Run to its end; the run must complete. Returns the terminal event."""
    async with open_stream(client, "GET", gen_url(app_id, message, runId=run_id)) as (response, events):
        assert response.status_code == 200, response.text
        seen = await collect(events)
    assert seen[-1].event == "done", seen[-1]
    return seen[-1]


async def new_app(client: httpx.AsyncClient, code_gen_type: str) -> str:
    response = await client.post("/apps", json={"name": f"a {code_gen_type} app", "codeGenType": code_gen_type})
    assert response.status_code == 201, response.text
    app_id: str = response.json()["id"]
    return app_id


async def preview_link(client: httpx.AsyncClient, app_id: str) -> str:
    """Where the app's site is served: ``/preview/<appId>/<key>/``, sandboxed."""
    link: str = (await client.get(f"/apps/{app_id}")).json()["previewLink"]
    return link


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)


def snapshot(root: Path) -> dict[str, bytes]:
    """Every regular file below root (relative POSIX path -> bytes)."""
    found: dict[str, bytes] = {}
    for directory, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(directory, name)
            found[path.relative_to(root).as_posix()] = path.read_bytes()
    return found


def assert_preview_headers(response: httpx.Response, content_type: str) -> None:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == content_type
    assert response.headers["cache-control"] == "no-store"
    assert response.headers["x-content-type-options"] == "nosniff"


# -- raw requests --------------------------------------------------------------------------------


@dataclass
class RawResponse:
    status_code: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> dict[str, Any]:
        body: dict[str, Any] = json.loads(self.body)
        return body


async def raw_get(port: int, target: str, token: str) -> RawResponse:
    """GET with the request target sent exactly as given (no normalisation of any kind)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n"
        writer.write(head.encode("ascii"))
        await writer.drain()
        async with asyncio.timeout(HANG_TIMEOUT_S):
            data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    raw_head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = raw_head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    assert "chunked" not in headers.get("transfer-encoding", ""), headers
    return RawResponse(int(status_line.split()[1]), headers, body)


# -- preview -------------------------------------------------------------------------------------


async def test_multi_file_preview_serves_the_generated_site(server: ServerThread, client: httpx.AsyncClient) -> None:
    app_id = await new_app(client, "multi_file")
    done = await run_to_done(client, app_id, "a click counter", "r-site")
    assert done.data["files"] == ["index.html", "style.css", "script.js"]
    assert done.data["previewUrl"] == f"/apps/{app_id}/preview/"
    workspace = server.settings.workspaces_dir / app_id
    link = await preview_link(client, app_id)

    index = await client.get(link)
    assert_preview_headers(index, HTML)
    assert index.content == (workspace / "index.html").read_bytes()
    assert b'<link rel="stylesheet" href="style.css">' in index.content
    assert (await client.get(f"{link}index.html")).content == index.content

    style = await client.get(f"{link}style.css")
    assert_preview_headers(style, "text/css; charset=utf-8")
    assert style.content == (workspace / "style.css").read_bytes()
    script = await client.get(f"{link}script.js")
    assert_preview_headers(script, JS)
    assert script.content == (workspace / "script.js").read_bytes()

    # Without the slash: a redirect to the slash form, which relative URLs (style.css) need.
    bare = await client.get(link.removesuffix("/"), follow_redirects=False)
    assert bare.status_code in (301, 302, 307, 308)
    assert bare.headers["location"] == link
    followed = await client.get(link.removesuffix("/"), follow_redirects=True)
    assert followed.status_code == 200
    assert [r.status_code for r in followed.history] == [bare.status_code]  # one hop, no loop
    assert followed.content == index.content

    # The previewUrl a run reports, for a signed-in browser: one hop to the link, same site.
    from_url = await client.get(done.data["previewUrl"], follow_redirects=True)
    assert [str(r.headers["location"]) for r in from_url.history] == [link]
    assert from_url.content == index.content

    # A missing file: a JSON 404, not a page.
    assert_error_body(await client.get(f"{link}missing.js"), 404, "preview_not_found")


async def test_vue_preview_serves_dist_only(
    server: ServerThread, client: httpx.AsyncClient, token: str, app_id: str
) -> None:
    workspace = server.settings.workspaces_dir / app_id
    link = await preview_link(client, app_id)
    write(workspace, {"index.html": f"<!-- source {SECRET} -->", "src/secret.js": f"const k = '{SECRET}'\n"})
    # No build yet: nothing to preview, a JSON 404 (never the workspace's own index.html).
    for path in ("", "index.html", "src/secret.js"):
        body = assert_error_body(await client.get(f"{link}{path}"), 404, "preview_not_found")
        assert SECRET not in json.dumps(body)

    dist_index = "<!doctype html><title>built</title><script type=module src=./assets/app.js></script>\n"
    write(
        workspace,
        {
            "dist/index.html": dist_index,
            "dist/assets/app.js": "console.log('built')\n",
            "dist/guide/index.html": "<p>guide</p>\n",
        },
    )
    index = await client.get(link)
    assert_preview_headers(index, HTML)
    assert index.text == dist_index
    asset = await client.get(f"{link}assets/app.js")
    assert_preview_headers(asset, JS)
    assert asset.text == "console.log('built')\n"

    # The sources beside dist/ are not part of the site, however they are named.
    assert_error_body(await client.get(f"{link}src/secret.js"), 404, "preview_not_found")
    for target in ("../src/secret.js", "assets/../../src/secret.js", "%2e%2e/src/secret.js", "..%2fsrc%2fsecret.js"):
        response = await raw_get(server.port, f"{link}{target}", token)
        assert response.status_code in (400, 404), (target, response)
        assert response.headers["content-type"].startswith("application/json")
        assert SECRET.encode() not in response.body
        assert response.json()["error"] in ("invalid_path", "preview_not_found")

    # A sub-directory's index: redirected to the slash form, then served (no redirect loop).
    bare = await client.get(f"{link}guide", follow_redirects=False)
    assert bare.status_code in (301, 302, 307, 308)
    assert bare.headers["location"] == f"{link}guide/"
    guide = await client.get(f"{link}guide/", follow_redirects=False)
    assert_preview_headers(guide, HTML)
    assert guide.text == "<p>guide</p>\n"
    # A file asked for as a directory is not one.
    assert_error_body(await client.get(f"{link}assets/app.js/"), 404, "preview_not_found")


# -- path escapes --------------------------------------------------------------------------------


@dataclass
class Site:
    """One server shared by the escape table: alice's vue app with a planted dist/, a multi_file app."""

    server: ServerThread
    token: str
    vue: str
    page: str
    outside: Path
    links: dict[str, str]  # app id -> its preview link


def module_settings(base: Path) -> Settings:
    """A server shared by a module's tests (the per-test conftest fixtures are function-scoped)."""
    return Settings(
        data_dir=base / "data",
        llm=LLMSettings(max_retries=0, timeout_s=30.0),
        simulator_pace_ms=2.0,
        sse_ping_s=5.0,
        gc_freeze=False,
        build=BuildSettings(enabled=False),
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base = tmp_path_factory.mktemp("escapes")
    settings = module_settings(base)
    outside = base / "outside"
    write(outside, {"secret.txt": SECRET, "index.html": f"<p>{SECRET}</p>"})
    server = ServerThread(settings).start()
    try:
        token = server.add_user("alice")
        with httpx.Client(base_url=server.url, headers=bearer(token), timeout=HANG_TIMEOUT_S) as http:
            vue, page = (
                http.post("/apps", json={"name": kind, "codeGenType": kind}).json()["id"]
                for kind in ("vue_project", "multi_file")
            )
            links = {app_id: http.get(f"/apps/{app_id}").json()["previewLink"] for app_id in (vue, page)}
        for app_id in (vue, page):
            workspace = settings.workspaces_dir / app_id
            served = workspace / "dist" if app_id == vue else workspace
            write(
                served,
                {
                    "index.html": "<p>the site</p>\n",
                    "assets/app.js": "console.log('app')\n",
                    "guide/index.html": "<p>guide</p>\n",
                    "docs/unlisted-name.txt": "a file in a directory without index.html\n",
                    ".env": f"TOKEN={SECRET}\n",
                    "assets/.secret.js": f"'{SECRET}'\n",
                    "a%00b": "a file literally named a%00b\n",
                },
            )
            write(workspace, {"src/secret.js": f"'{SECRET}'\n"})
            (served / "leak.txt").symlink_to(outside / "secret.txt")
            (served / "leakdir").symlink_to(outside, target_is_directory=True)
            (served / "relative-leak.txt").symlink_to("../src/secret.js")
            (served / "env-link.txt").symlink_to(".env")  # stays in the root, leads to a hidden file
        yield Site(server, token, vue, page, outside, links)
    finally:
        server.stop()


# (request target below the site's root, allowed statuses). None of them may serve the secret.
BAD = (400,)
NOT_FOUND = (404,)
REFUSED = (400, 404)
ESCAPES = [
    pytest.param("../src/secret.js", REFUSED, id="dotdot"),
    pytest.param("../../../../../../etc/passwd", REFUSED, id="dotdot-deep"),
    pytest.param("assets/../../src/secret.js", REFUSED, id="dotdot-after-a-dir"),
    pytest.param("..", REFUSED, id="dotdot-alone"),
    pytest.param("%2e%2e/src/secret.js", REFUSED, id="encoded-dotdot"),
    pytest.param("%2E%2E%2Fsrc%2Fsecret.js", REFUSED, id="encoded-dotdot-slash-upper"),
    pytest.param("%252e%252e/src/secret.js", BAD, id="double-encoded-dotdot"),
    pytest.param("%252e%252e%252fsrc%252fsecret.js", BAD, id="double-encoded-all"),
    pytest.param("%25252e%25252e%25252fsrc", BAD, id="triple-encoded"),
    pytest.param("..%5csrc%5csecret.js", REFUSED, id="encoded-backslash"),
    pytest.param("..\\src\\secret.js", REFUSED, id="raw-backslash"),
    pytest.param("assets\\app.js", BAD, id="backslash-inside"),
    pytest.param("%2Fetc%2Fpasswd", REFUSED, id="encoded-absolute"),
    pytest.param("/etc/passwd", NOT_FOUND, id="doubled-slash-is-a-site-path"),
    pytest.param("{outside}", REFUSED, id="encoded-absolute-outside"),
    pytest.param("/{outside}", REFUSED, id="encoded-absolute-after-a-slash"),
    pytest.param("C:/Windows/win.ini", BAD, id="drive-letter"),
    pytest.param("index.html%00.js", BAD, id="nul"),
    pytest.param("%00", BAD, id="nul-alone"),
    pytest.param("a%2500b", (200,), id="double-encoded-nul-is-a-name"),
    pytest.param("leak.txt", REFUSED, id="symlink-to-outside-file"),
    pytest.param("leakdir/secret.txt", REFUSED, id="symlink-dir-file"),
    pytest.param("leakdir/", REFUSED, id="symlink-dir-index"),
    pytest.param("leakdir", REFUSED, id="symlink-dir-bare"),
    pytest.param("relative-leak.txt", REFUSED, id="relative-symlink-out-of-root"),
    pytest.param("env-link.txt", REFUSED, id="symlink-to-a-hidden-file-inside"),
    pytest.param(".env", REFUSED, id="hidden-file"),
    pytest.param("%2eenv", REFUSED, id="hidden-file-encoded"),
    pytest.param("assets/.secret.js", REFUSED, id="hidden-file-in-dir"),
    pytest.param("....//....//src/secret.js", REFUSED, id="dot-runs"),
    pytest.param("docs/", NOT_FOUND, id="dir-without-index"),
    pytest.param("docs", NOT_FOUND, id="dir-without-index-bare"),
    pytest.param("a" * 300, BAD, id="over-long-name"),
    pytest.param("a/" * 600 + "x", BAD, id="over-long-path"),
]


def _fill(target: str, s: Site) -> str:
    """{outside}: the absolute path of a secret outside every workspace, percent-encoded whole."""
    return target.replace("{outside}", quote(str(s.outside / "secret.txt"), safe=""))


@pytest.mark.parametrize("app", ["vue", "page"])
@pytest.mark.parametrize(("target", "allowed"), ESCAPES)
async def test_preview_path_escapes_are_refused(site: Site, app: str, target: str, allowed: tuple[int, ...]) -> None:
    app_id = site.vue if app == "vue" else site.page
    target = _fill(target, site)
    link = site.links[app_id]
    # The signed-in address only ever redirects to the preview link, with the target as sent
    # (a character no client should send comes percent-encoded): refused there, or served.
    door = await raw_get(site.server.port, f"/apps/{app_id}/preview/{target}", site.token)
    assert door.status_code == 302, door
    assert door.headers["location"].startswith(link), door
    assert SECRET.encode() not in door.body
    for sent in (door.headers["location"], f"{link}{target}"):
        await check_refused(site, sent, allowed, dotdot=".." in target)


async def check_refused(site: Site, sent: str, allowed: tuple[int, ...], *, dotdot: bool) -> None:
    response = await raw_get(site.server.port, sent, site.token)
    assert SECRET.encode() not in response.body, (sent, response)
    assert response.status_code in allowed, (sent, response)
    if response.status_code == 200:
        assert response.body == b"a file literally named a%00b\n"
        return
    assert response.headers["content-type"].startswith("application/json"), response
    body = response.json()
    assert body["status"] == response.status_code
    assert body["error"] == ("invalid_path" if response.status_code == 400 else "preview_not_found"), body
    assert b"unlisted-name" not in response.body  # no directory listing
    if dotdot:  # the segment reached the server as sent, not normalised away on the way
        assert ".." in body["message"], body


async def test_the_signed_in_address_only_redirects_to_the_sandboxed_link(site: Site) -> None:
    """A document served on the API's origin could call the API as the signed-in user: the
    /apps address of a site serves none of it, only the way to the link."""
    for app_id, link in site.links.items():
        bare = await raw_get(site.server.port, f"/apps/{app_id}/preview", site.token)
        assert (bare.status_code, bare.headers["location"]) == (302, link)
        for rest in ("", "index.html", "guide/", "assets/app.js?v=2&x=%20y", "docs/unlisted-name.txt"):
            door = await raw_get(site.server.port, f"/apps/{app_id}/preview/{rest}", site.token)
            assert (door.status_code, door.headers["location"]) == (302, link + rest), door
            assert b"the site" not in door.body
            assert b"console.log" not in door.body
        served = await raw_get(site.server.port, link, site.token)
        assert (served.status_code, served.body) == (200, b"<p>the site</p>\n")
        assert served.headers["content-security-policy"] == "sandbox allow-scripts allow-forms allow-popups"


async def test_directory_with_index_redirects_within_the_preview(site: Site) -> None:
    for link in site.links.values():
        response = await raw_get(site.server.port, f"{link}guide", site.token)
        assert response.status_code in (301, 302, 307, 308), response
        assert response.headers["location"] == f"{link}guide/"
        served = await raw_get(site.server.port, f"{link}guide/", site.token)
        assert (served.status_code, served.body) == (200, b"<p>guide</p>\n")


async def test_a_dist_that_is_a_symlink_is_not_served(site: Site) -> None:
    """dist/ itself planted as a link: the preview root would be wherever it points."""
    async with httpx.AsyncClient(base_url=site.server.url, headers=bearer(site.token), limits=FRESH) as http:
        app_id = await new_app(http, "vue_project")
        workspace = site.server.settings.workspaces_dir / app_id
        workspace.mkdir(parents=True)
        (workspace / "dist").symlink_to(site.outside, target_is_directory=True)
        for path in ("secret.txt", "index.html", ""):
            response = await http.get(f"/apps/{app_id}/preview/{path}", follow_redirects=True)
            assert SECRET not in response.text
            assert_error_body(response, 404, "preview_not_found")


# -- authorization -------------------------------------------------------------------------------


async def test_workspace_endpoints_check_the_owner(
    server: ServerThread, client: httpx.AsyncClient, other_client: httpx.AsyncClient
) -> None:
    app_id = await new_app(client, "multi_file")
    await run_to_done(client, app_id, "a click counter", "r-own")
    requests: list[tuple[str, str, dict[str, Any]]] = [
        ("GET", f"/apps/{app_id}/preview", {}),
        ("GET", f"/apps/{app_id}/preview/", {}),
        ("GET", f"/apps/{app_id}/preview/index.html", {}),
        ("GET", f"/apps/{app_id}/preview/%2e%2e/x", {}),  # ownership is checked before the path
        ("GET", f"/apps/{app_id}/download", {}),
        ("GET", f"/apps/{app_id}/checkpoints", {}),
        ("POST", f"/apps/{app_id}/revert", {"json": {"runId": "r-own"}}),
    ]
    before = snapshot(server.settings.workspaces_dir / app_id)
    for method, path, kwargs in requests:
        response = await other_client.request(method, path, follow_redirects=False, **kwargs)
        body = assert_error_body(response, 403, "forbidden")
        assert "<html" not in json.dumps(body)
    async with httpx.AsyncClient(base_url=server.url, limits=FRESH) as anonymous:
        for method, path, kwargs in requests:
            assert_error_body(await anonymous.request(method, path, follow_redirects=False, **kwargs), 401)
    for method, path, kwargs in requests:
        unknown = path.replace(app_id, "no-such-app")
        assert_error_body(await client.request(method, unknown, follow_redirects=False, **kwargs), 404, "app_not_found")
    # None of it reverted anything.
    assert len((await client.get(f"/apps/{app_id}/checkpoints")).json()) == 2  # baseline + run
    assert snapshot(server.settings.workspaces_dir / app_id) == before


# -- download ------------------------------------------------------------------------------------


def unzip(response: httpx.Response) -> dict[str, bytes]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/zip"
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("attachment;")
    assert re.search(r'filename="[^"/\\]+\.zip"', disposition), disposition
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        assert archive.testzip() is None
        return {info.filename: archive.read(info) for info in archive.infolist()}


async def test_download_zips_the_workspace_without_internal_dirs(
    server: ServerThread, client: httpx.AsyncClient, app_id: str, tmp_path: Path
) -> None:
    workspace = server.settings.workspaces_dir / app_id
    # No workspace yet, then an empty one: a valid, empty zip.
    assert unzip(await client.get(f"/apps/{app_id}/download")) == {}
    workspace.mkdir(parents=True)
    assert unzip(await client.get(f"/apps/{app_id}/download")) == {}

    kept: dict[str, str | bytes] = {
        "index.html": "<!doctype html><p>hi</p>\n",
        "package.json": '{"name": "x"}\n',
        "src/main.js": "import './style.css'\n",
        "src/deep/er/util.js": "export const x = 1\n",
        "public/logo.bin": bytes(range(256)) * 4,
        "dist/index.html": "<p>built</p>\n",
        ".gitignore": "node_modules\n",
        "empty.txt": b"",
    }
    dropped: dict[str, str | bytes] = {
        "node_modules/vue/index.js": "module.exports = {}\n",
        "src/node_modules/x.js": "nested\n",
        ".git/HEAD": "ref: refs/heads/main\n",
        ".git/config": "[core]\n",
        ".runforge-build-x/dist/index.html": "half-made\n",
    }
    write(workspace, {**kept, **dropped})
    write(tmp_path, {"outside.txt": SECRET})
    (workspace / "link.txt").symlink_to(tmp_path / "outside.txt")
    (workspace / "inner-link.js").symlink_to("src/main.js")
    (workspace / "linked-dir").symlink_to(tmp_path, target_is_directory=True)

    files = unzip(await client.get(f"/apps/{app_id}/download"))
    assert files == {name: content.encode() if isinstance(content, str) else content for name, content in kept.items()}
    assert (await client.get(f"/apps/{app_id}/download")).headers["cache-control"] == "no-store"


# -- checkpoints and revert ----------------------------------------------------------------------


async def test_checkpoints_list_and_revert_and_undo(server: ServerThread, client: httpx.AsyncClient) -> None:
    started = datetime.now(UTC).replace(microsecond=0)
    app_id = await new_app(client, "multi_file")
    workspace = server.settings.workspaces_dir / app_id
    assert (await client.get(f"/apps/{app_id}/checkpoints")).json() == []

    first = await run_to_done(client, app_id, "a click counter", "r-first")
    after_first = snapshot(workspace)
    assert set(after_first) == {"index.html", "style.css", "script.js"}
    # The simulator answers every run of an app like its first one, so the second run's
    # difference comes from files added in between (as a user would); its baseline records them.
    write(workspace, {"file_1.txt": "one\n", "file_2.txt": "two\n", "notes/todo.md": "- ship it\n"})
    second = await run_to_done(client, app_id, "add the notes", "r-second")
    after_second = snapshot(workspace)
    assert set(after_second) == set(after_first) | {"file_1.txt", "file_2.txt", "notes/todo.md"}

    listed = (await client.get(f"/apps/{app_id}/checkpoints")).json()
    assert [(c["kind"], c["runId"], c["files"], c["filesChanged"]) for c in listed] == [
        ("run", "r-second", 6, 0),  # the same three files, written again as they were
        ("baseline", "r-second", 6, 3),  # the files written between the runs
        ("run", "r-first", 3, 3),
        ("baseline", "r-first", 0, 0),  # the empty workspace the first run started from
    ]
    assert listed[0]["sha"] == second.data["checkpoint"]
    assert listed[2]["sha"] == first.data["checkpoint"]
    assert len({c["sha"] for c in listed}) == 4
    now = datetime.now(UTC)
    previous = now
    for checkpoint in listed:
        assert set(checkpoint) == {"sha", "runId", "kind", "createdAt", "summary", "files", "filesChanged"}
        assert SHA.fullmatch(checkpoint["sha"]), checkpoint
        assert checkpoint["runId"] in checkpoint["summary"]
        created = datetime.fromisoformat(checkpoint["createdAt"])
        assert created.tzinfo is not None
        assert started <= created <= previous  # newest first
        previous = created

    # Back to the first run: the files added since are gone, the page is as it was.
    reverted = await client.post(f"/apps/{app_id}/revert", json={"runId": "r-first"})
    assert reverted.status_code == 200, reverted.text
    view = reverted.json()
    assert (view["kind"], view["runId"], view["files"], view["filesChanged"]) == ("revert", "r-first", 3, 3)
    assert SHA.fullmatch(view["sha"])
    assert view["sha"] not in {c["sha"] for c in listed}
    assert snapshot(workspace) == after_first
    assert not (workspace / "notes").exists()  # no empty directory left behind
    relisted = (await client.get(f"/apps/{app_id}/checkpoints")).json()
    assert relisted[0] == view
    assert relisted[1:] == listed
    gone = await client.get(f"/apps/{app_id}/preview/file_1.txt", follow_redirects=True)
    assert_error_body(gone, 404, "preview_not_found")

    # The revert is itself undoable: back to the second run.
    undone = await client.post(f"/apps/{app_id}/revert", json={"runId": "r-second"})
    assert undone.status_code == 200, undone.text
    assert (undone.json()["kind"], undone.json()["runId"], undone.json()["files"]) == ("revert", "r-second", 6)
    assert snapshot(workspace) == after_second
    assert (await client.get(f"/apps/{app_id}/preview/file_1.txt", follow_redirects=True)).text == "one\n"
    assert [c["sha"] for c in (await client.get(f"/apps/{app_id}/checkpoints")).json()] == [
        undone.json()["sha"],
        view["sha"],
        *(c["sha"] for c in listed),
    ]


async def test_revert_refuses_bad_requests_and_changes_nothing(server: ServerThread, client: httpx.AsyncClient) -> None:
    app_id = await new_app(client, "multi_file")
    await run_to_done(client, app_id, "a click counter", "r-1")
    workspace = server.settings.workspaces_dir / app_id
    (workspace / "extra.txt").write_text("not in any checkpoint\n")
    before = snapshot(workspace)
    url = f"/apps/{app_id}/revert"

    assert_error_body(await client.post(url, json={"runId": "r-unknown"}), 404, "checkpoint_not_found")
    for bad_id in ("", "../r-1", "a b", "r" * 65, "-r", "r/1", "r\u00e9"):
        assert_error_body(await client.post(url, json={"runId": bad_id}), 400, "invalid_run_id")
    for body in ({}, {"runId": 1}, {"runId": None}, {"runId": "r-1", "mode": "hard"}, ["r-1"]):
        assert_error_body(await client.post(url, json=body), 400, "invalid_request")
    bad_json = await client.post(url, content=b'{"runId": ', headers={"content-type": "application/json"})
    assert_error_body(bad_json, 400, "invalid_json")
    deep = await client.post(url, content=b"[" * 100_000, headers={"content-type": "application/json"})
    assert_error_body(deep, 400, "invalid_json")

    assert snapshot(workspace) == before
    assert len((await client.get(f"/apps/{app_id}/checkpoints")).json()) == 2


async def test_revert_while_a_run_is_active_is_a_conflict(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    url = gen_url(app_id, "an essay [sim:long_text pace=50]", runId="r-long")
    async with open_stream(client, "GET", url) as (response, events):
        assert response.status_code == 200
        await collect(events, until=lambda e: e.event == "message")
        for run_id in ("r-long", "r-other"):
            conflict = await client.post(f"/apps/{app_id}/revert", json={"runId": run_id})
            assert_error_body(conflict, 409, "run_active")
        live = (await client.get("/runs/r-long")).json()
        assert (live["status"], live["live"]) == ("running", True)  # the refused revert stopped nothing
        assert (await client.post("/runs/r-long/stop")).status_code == 202
        rest = await collect(events)
    assert rest[-1].event == "interrupted"
    # Idle again: an interrupted run has no checkpoint to revert to.
    assert_error_body(
        await client.post(f"/apps/{app_id}/revert", json={"runId": "r-long"}), 404, "checkpoint_not_found"
    )


async def test_deleting_the_app_removes_its_checkpoints(server: ServerThread, client: httpx.AsyncClient) -> None:
    app_id = await new_app(client, "multi_file")
    await run_to_done(client, app_id, "a click counter", "r-gone")
    repository = server.settings.checkpoints_dir / f"{app_id}.git"
    assert (repository / "HEAD").is_file()
    assert len((await client.get(f"/apps/{app_id}/checkpoints")).json()) == 2

    assert (await client.delete(f"/apps/{app_id}")).status_code == 204
    assert not repository.exists()
    assert not (server.settings.workspaces_dir / app_id).exists()
    assert_error_body(await client.get(f"/apps/{app_id}/checkpoints"), 404, "app_not_found")
    assert_error_body(await client.post(f"/apps/{app_id}/revert", json={"runId": "r-gone"}), 404, "app_not_found")


# -- the path-escape corpus over HTTP ------------------------------------------------------------
#
# tests/workspace_kit.py's corpus (the one every file tool runs against) against the files API, the
# preview, the preview link and the download, on a workspace planted with links to a canary
# outside it. Each path goes out twice: percent-encoded so that the handler sees exactly the
# corpus string ("quoted"), and, where it can be typed into a request line, as written ("raw":
# the server's own URL decoding then applies, so "%2e%2e%2fx" arrives as "../x").

CANARY = "top secret"  # tests/workspace_kit.py's secret outside the workspace


@dataclass
class CorpusSite:
    server: ServerThread
    token: str
    app_id: str
    key: str
    base: Path  # the workspaces directory: outside/ and sibling/ are beside the app's workspace


@pytest.fixture(scope="module")
def corpus_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CorpusSite]:
    base = tmp_path_factory.mktemp("corpus")
    settings = module_settings(base)
    server = ServerThread(settings).start()
    try:
        token = server.add_user("alice")
        with httpx.Client(base_url=server.url, headers=bearer(token), timeout=HANG_TIMEOUT_S) as http:
            created = http.post("/apps", json={"name": "corpus", "codeGenType": "multi_file"}).json()
        app_id, link = created["id"], created["previewLink"]
        settings.workspaces_dir.mkdir(parents=True, exist_ok=True)
        make_workspace(settings.workspaces_dir, app_id)
        key = link.strip("/").split("/")[2]
        yield CorpusSite(server, token, app_id, key, settings.workspaces_dir)
    finally:
        server.stop()


def _quoted(user_path: str) -> str:
    return quote(user_path.encode("utf-8", "surrogateescape"), safe="/")


def _typeable(user_path: str) -> bool:
    return user_path != "" and all(33 <= ord(c) < 127 and c not in "?#" for c in user_path)


# No file at all: the workspace listing (files API) or the site's index (preview). The router
# collapses the "//" of ".../files//" (see tests/test_api.py), so "/" is the root too.
NOT_A_PATH = {"", "/"}
SURFACES = {
    "files": ("/apps/{app}/files/", ("invalid_path", "file_not_found")),
    "preview": ("/apps/{app}/preview/", ("invalid_path", "preview_not_found")),
    "preview-link": ("/preview/{app}/{key}/", ("invalid_path", "preview_not_found")),
}


def _canary_intact(s: CorpusSite) -> None:
    assert (s.base / "outside" / "secret.txt").read_text() == CANARY
    assert os.listdir(s.base / "sibling") == []
    assert not (s.base / "outside" / "created.txt").exists()


CORPUS_OVER_HTTP = [(path, "quoted") for path in HOSTILE] + [(path, "raw") for path in HOSTILE if _typeable(path)]


@pytest.mark.parametrize("surface", list(SURFACES))
@pytest.mark.parametrize(("user_path", "encoding"), CORPUS_OVER_HTTP)
async def test_escape_corpus_over_http(corpus_site: CorpusSite, surface: str, encoding: str, user_path: str) -> None:
    s = corpus_site
    prefix, codes = SURFACES[surface]
    target = prefix.format(app=s.app_id, key=s.key) + (_quoted(user_path) if encoding == "quoted" else user_path)
    response = await raw_get(s.server.port, target, s.token)
    assert CANARY.encode() not in response.body, (target, response)
    if surface == "preview" and response.status_code == 302:  # the signed-in address: to the link
        target = response.headers["location"]
        assert target.startswith(f"/preview/{s.app_id}/{s.key}/"), (target, response)
        response = await raw_get(s.server.port, target, s.token)
        assert CANARY.encode() not in response.body, (target, response)
    if user_path in NOT_A_PATH:
        assert response.status_code in (200, 301, 302, 307, 308), response
    else:
        assert 400 <= response.status_code < 500, (target, response)
        assert response.headers["content-type"].startswith("application/json"), response
        body = response.json()
        assert body["status"] == response.status_code, body
        assert body["error"] in codes, body
        # Refused as a path, not merely missing (the preview answers 404 for a hidden name first).
        hidden = surface != "files" and any(part.startswith(".") for part in user_path.split("/") if part)
        if encoding == "quoted" and user_path in SYMLINK_HOSTILE + HARDLINK_HOSTILE + UNICODE_HOSTILE and not hidden:
            assert body["error"] == "invalid_path", body
    _canary_intact(s)
    assert (await raw_get(s.server.port, "/healthz", s.token)).status_code == 200


async def test_escape_corpus_workspace_listing_and_download(corpus_site: CorpusSite) -> None:
    s = corpus_site
    async with httpx.AsyncClient(base_url=s.server.url, headers=bearer(s.token), limits=FRESH) as http:
        listing = await http.get(f"/apps/{s.app_id}/files")
        assert listing.status_code == 200
        assert CANARY not in listing.text
        kinds = {entry["path"]: entry["kind"] for entry in listing.json()}
        assert {kinds[name] for name in ("out_dir", "out_file", "up", "sub/esc", "dangling")} == {"symlink"}
        assert not any(path.startswith(("out_dir/", "up/", "sub/esc/")) for path in kinds)  # never followed
        files = unzip(await http.get(f"/apps/{s.app_id}/download"))
    assert all(CANARY.encode() not in content for content in files.values())
    # Neither links out nor hard links are in the archive; the project's own files are.
    assert not set(files) & {"out_file", "dangling", "hardlink_out", "sub/hardlink_out", "up", "srclink"}
    assert not any(name.startswith(("out_dir/", "up/", "sub/esc/", "srclink/")) for name in files)
    assert {"index.html", "package.json", "src/App.vue"} <= set(files)
    _canary_intact(s)
