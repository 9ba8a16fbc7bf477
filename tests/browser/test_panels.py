"""The chat page in a real Chromium: a rejoined stream, the non-owner view, the preview, quick start,
stop and continue, and a layout that keeps the composer in view.

With RUNFORGE_SCREENSHOTS=1 these tests also save docs/img/{signed-out,non-owner,streaming,stopped,
done-preview}.png (the `screenshot` fixture).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest_asyncio

from tests.support import TERMINAL, ServerThread, collect, open_stream, text_of, wait_for_status

if TYPE_CHECKING:
    from playwright.async_api import Browser, CDPSession, Locator, LocatorAssertions, Page, Request

    from tests.browser.conftest import Screenshot

AI = "#messages li.msg.ai"
WAIT_MS = 10_000
LONG_RUN_MS = 20_000  # a 400-token run at 10 ms a token, a dropped connection and its backoff
BLUE = "rgb(37, 99, 235)"  # #2563eb, the simulator's style.css for buttons


def expect(locator: Locator) -> LocatorAssertions:
    # Imported here, not at the top: without playwright the conftest's fixtures skip (or fail) with
    # the reason, instead of this module failing to import.
    from playwright.async_api import expect as playwright_expect

    return playwright_expect(locator)


# -- helpers ---------------------------------------------------------------------------------


async def create_app(api: httpx.AsyncClient, code_gen_type: str, name: str = "panel test") -> dict[str, Any]:
    response = await api.post("/apps", json={"name": name, "codeGenType": code_gen_type})
    assert response.status_code == 201, response.text
    app: dict[str, Any] = response.json()
    return app


async def open_app(page: Page, base_url: str, app_id: str) -> None:
    """Load the page on the app: a full load (from `/`, changing the hash would not reload), so the
    app list also shows the apps created over HTTP since the page was first loaded."""
    await page.goto("about:blank")
    await page.goto(f"{base_url}/#/apps/{app_id}")
    await expect(page.locator(f"#app-list a[data-id='{app_id}']")).to_have_attribute("aria-current", "page")
    await expect(page.locator("#app-title")).not_to_have_text("Pick or create an app")
    await expect(page.locator("#primary")).to_have_attribute("data-kind", "send")


async def send(page: Page, text: str) -> Locator:
    """Type `text` and press the primary button; the AI message that answers it."""
    await page.fill("#input", text)
    await expect(page.locator("#primary")).to_have_attribute("data-kind", "send")
    await page.click("#primary")
    ai = page.locator(AI).last
    await expect(ai).to_have_attribute("data-run-id", re.compile(r"^[0-9a-f]{32}$"))
    return ai


async def run_id_of(ai: Locator) -> str:
    run_id = await ai.get_attribute("data-run-id")
    assert run_id is not None
    return run_id


async def wait_done(ai: Locator, timeout_ms: int = WAIT_MS) -> None:
    await expect(ai.locator(".status")).to_have_text(re.compile(r"^done"), timeout=timeout_ms)


def besides(js_errors: list[str], expected: str) -> list[str]:
    """js_errors without the browser's own log lines (network errors) that match `expected`.

    Chromium logs a failed or refused request as console.error "Failed to load resource: …"; the
    conftest counts those too, so a test that causes one on purpose leaves out exactly that one.
    """
    prefix = re.compile(r"^console\.error: Failed to load resource: " + expected)
    return [error for error in js_errors if not prefix.search(error)]


async def replayed_text(api: httpx.AsyncClient, run_id: str) -> str:
    """The run's whole text as the server replays it: the `d` fields of its unnamed events."""
    async with open_stream(api, "GET", f"/runs/{run_id}/events") as (response, events):
        assert response.status_code == 200, response
        seen = await collect(events, until=lambda e: e.event in TERMINAL)
    assert seen[-1].event == "done", seen[-1]
    return text_of(seen)


class DropProxy:
    """A TCP relay in front of the server whose connections the test can cut, as a network would.

    Chromium keeps an open EventSource through `context.set_offline(True)` (it only fails new
    requests), and `page.route` cannot touch a response that is already streaming. Loading the
    page through this relay and aborting its connections resets the stream's socket under the
    page, so the EventSource errors out while the run goes on on the server.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self.refusing = False
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> DropProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def cut(self) -> int:
        """Reset every open connection; the number cut."""
        links = list(self._links)
        for browser_side, server_side in links:
            browser_side.transport.abort()
            server_side.transport.abort()
        return len(links)

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            if self.refusing:  # the network is still down: reset new connections at once
                writer.transport.abort()
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            link = (writer, up_writer)
            self._links.add(link)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._links.discard(link)
                up_writer.transport.abort()
                writer.transport.abort()
        finally:
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        with contextlib.suppress(ConnectionError, OSError, RuntimeError):
            if not sink.transport.is_closing():
                sink.write_eof()


@pytest_asyncio.fixture(loop_scope="session")
async def proxy(server: ServerThread) -> AsyncIterator[DropProxy]:
    relay = await DropProxy(server.port).start()
    yield relay
    await relay.close()


class IframeTarget:
    """JavaScript in an out-of-process iframe, through a CDP session of its own.

    Chromium gives sandboxed iframes processes of their own, and the page's preview goes from its
    srcdoc (one process) through about:blank (the page's process, as showPreview removes srcdoc)
    to the preview link (another process) within a few milliseconds. Playwright 1.65 loses such a
    frame about half of the time: its Frame stays at about:blank and every call on it fails with
    TargetClosedError (frame_locator and page.frames alike). So the test finds the iframe's
    target by its URL and evaluates there itself.
    """

    def __init__(self, cdp: CDPSession, session_id: str) -> None:
        self._cdp = cdp
        self._session_id = session_id
        self._ids = itertools.count(1)
        self._answers: dict[int, asyncio.Future[dict[str, Any]]] = {}
        cdp.on("Target.receivedMessageFromTarget", self._receive)

    @classmethod
    @contextlib.asynccontextmanager
    async def attach(cls, browser: Browser, url_prefix: str) -> AsyncIterator[IframeTarget]:
        """The iframe whose document's URL starts with url_prefix (waits for it)."""
        cdp = await browser.new_browser_cdp_session()
        try:
            async with asyncio.timeout(WAIT_MS / 1000):
                while True:
                    targets = (await cdp.send("Target.getTargets"))["targetInfos"]
                    found = [t for t in targets if t["type"] == "iframe" and t["url"].startswith(url_prefix)]
                    if found:
                        break
                    await asyncio.sleep(0.02)
            attached = await cdp.send("Target.attachToTarget", {"targetId": found[0]["targetId"], "flatten": False})
            yield cls(cdp, attached["sessionId"])
        finally:
            await cdp.detach()

    def _receive(self, event: dict[str, Any]) -> None:
        if event["sessionId"] != self._session_id:
            return
        message = json.loads(event["message"])
        answer = self._answers.pop(message.get("id", 0), None)
        if answer is not None and not answer.done():
            answer.set_result(message)

    async def evaluate(self, expression: str) -> Any:
        """The value of a JavaScript expression in the iframe's document."""
        call_id = next(self._ids)
        answer = self._answers[call_id] = asyncio.get_running_loop().create_future()
        params = {"expression": expression, "returnByValue": True}
        message = json.dumps({"id": call_id, "method": "Runtime.evaluate", "params": params})
        await self._cdp.send("Target.sendMessageToTarget", {"sessionId": self._session_id, "message": message})
        async with asyncio.timeout(WAIT_MS / 1000):
            reply = await answer
        assert "error" not in reply, reply
        assert "exceptionDetails" not in reply["result"], reply
        return reply["result"]["result"].get("value")

    async def wait_for(self, expression: str) -> None:
        """Until the expression is true in the iframe (a navigation in progress counts as false)."""
        async with asyncio.timeout(WAIT_MS / 1000):
            while True:
                with contextlib.suppress(AssertionError):
                    if await self.evaluate(expression) is True:
                        return
                await asyncio.sleep(0.02)


# -- tests -----------------------------------------------------------------------------------


async def test_a_dropped_stream_is_rejoined_without_duplicated_or_missing_text(
    server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page, proxy: DropProxy, js_errors: list[str]
) -> None:
    page = signed_in_page  # the cookie is per host, not per port: it signs in through the relay too
    app = await create_app(api, "html")
    rejoins: list[str] = []

    def on_request(request: Request) -> None:
        if "/events?" in request.url:
            rejoins.append(request.url)

    page.on("request", on_request)
    await open_app(page, proxy.url, app["id"])
    ai = await send(page, "a long answer [sim:long_text tokens=400 pace=10]")
    run_id = await run_id_of(ai)
    await expect(ai.locator(".reply")).to_have_text(re.compile(r"(\S+\s+){30}"))  # some text arrived

    # The network goes down: the stream's socket is reset and stays unreachable for a while.
    proxy.refusing = True
    assert proxy.cut() >= 1
    await expect(ai.locator(".status")).to_have_text("connection lost, rejoining…")
    at_drop = (await api.get(f"/runs/{run_id}")).json()
    assert at_drop["live"], at_drop
    assert at_drop["status"] == "running", at_drop
    # The run goes on without the page (onDisconnect=continue): wait until it has sent 30 more
    # events the page never received, so the rejoin has text to catch up on.
    async with asyncio.timeout(WAIT_MS / 1000):
        while (latest := (await api.get(f"/runs/{run_id}")).json())["lastSeq"] < at_drop["lastSeq"] + 30:
            assert latest["live"], latest
            await asyncio.sleep(0.02)
    proxy.refusing = False

    await wait_done(ai, LONG_RUN_MS)
    expected = await replayed_text(api, run_id)
    assert len(expected.split()) == 400
    reply = await ai.locator(".reply").text_content()
    assert reply == expected.strip(), "the reply differs from the run's text: duplicated or missing text"

    # The page rejoined the running run from the last event it had shown, not from the start.
    assert rejoins, "the page never rejoined at /runs/{id}/events"
    last_event_id = parse_qs(urlsplit(rejoins[0]).query)["lastEventId"][0]
    rejoined_at = int(last_event_id.removeprefix(f"{run_id}:"))
    assert 1 < rejoined_at <= at_drop["lastSeq"], (last_event_id, at_drop)
    final = (await api.get(f"/runs/{run_id}")).json()
    assert final["status"] == "completed", final
    assert final["lastSeq"] > rejoined_at + 30, final
    assert await page.locator("#primary").get_attribute("data-kind") == "send"
    # The cut itself is logged by Chromium (the stream's and a refused rejoin's net::ERR_…).
    assert besides(js_errors, rf"net::ERR_[A-Z_]+ \(\{{'url': '{re.escape(proxy.url)}/[^']*{run_id}") == []


async def test_a_non_owner_sees_the_button_disabled_with_the_reason(
    server: ServerThread, api: httpx.AsyncClient, page: Page, js_errors: list[str], screenshot: Screenshot
) -> None:
    app = await create_app(api, "multi_file", name="alice's site")
    response = await page.goto(f"{server.url}/")
    assert response is not None
    assert response.status == 200
    await expect(page.locator("body")).to_contain_text("Runforge")
    await screenshot(page, "signed-out")

    bob = server.add_user("bob")
    response = await page.goto(f"{server.url}/?token={bob}")
    assert response is not None
    assert response.ok
    await page.goto(f"{server.url}/#/apps/{app['id']}")
    await expect(page.locator("#app-title")).to_have_text("This app belongs to another user")
    primary = page.locator("#primary")
    await expect(primary).to_be_disabled()
    await expect(primary).to_have_attribute("data-kind", "disabled")
    await expect(primary).to_have_attribute("title", "Only the owner of this app can run it")
    await expect(page.locator("#notice")).to_have_text("You can look, but only its owner can run it.")
    # Typing does not enable it, and Enter does not start a run.
    await page.fill("#input", "make it red")
    await page.press("#input", "Enter")
    await expect(primary).to_be_disabled()
    assert await page.locator(AI).count() == 0
    # Nothing of alice's app is shown: no preview link, no files.
    assert await page.locator("#preview").get_attribute("src") is None
    assert await page.locator("#files li").count() == 0
    await screenshot(page, "non-owner")
    # The page learns that bob is not the owner from GET /apps/<id> answering 403, which Chromium logs.
    url = re.escape(f"{server.url}/apps/{app['id']}")
    forbidden = rf"the server responded with a status of 403 \(Forbidden\) \(\{{'url': '{url}'"
    assert besides(js_errors, forbidden) == [], js_errors


async def test_the_preview_shows_the_generated_site_in_an_opaque_origin(
    server: ServerThread,
    api: httpx.AsyncClient,
    browser: Browser,
    signed_in_page: Page,
    js_errors: list[str],
    screenshot: Screenshot,
) -> None:
    page = signed_in_page
    app = await create_app(api, "multi_file")
    await open_app(page, server.url, app["id"])
    ai = await send(page, "a counter site")
    await wait_done(ai)
    await expect(page.locator("#files")).to_contain_text("style.css")

    # The preview is sandboxed by the page's iframe (and by the server's CSP) without allow-same-origin.
    sandbox = await page.locator("#preview").get_attribute("sandbox")
    assert sandbox is not None
    assert "allow-same-origin" not in sandbox.split(), sandbox
    # The page points the iframe at the app's preview link once the run is done...
    shows = "link => (document.getElementById('preview').getAttribute('src') || '').startsWith(link + '?t=')"
    await page.wait_for_function(shows, arg=app["previewLink"])
    # ...and the frame shows the generated site, with its own style sheet and script.
    async with IframeTarget.attach(browser, f"{server.url}{app['previewLink']}") as frame:
        link = json.dumps(app["previewLink"])
        await frame.wait_for(f"document.readyState === 'complete' && location.pathname === {link}")
        assert await frame.evaluate("document.querySelector('h1').outerHTML") == "<h1>Click Counter</h1>"
        background = "getComputedStyle(document.getElementById('increment')).backgroundColor"
        assert await frame.evaluate(background) == BLUE  # style.css loaded in the frame
        # Sandboxed without allow-same-origin: an opaque origin, which can never act as the user.
        assert await frame.evaluate("self.origin") == "null"
        cookie = "(() => { try { return document.cookie; } catch (error) { return error.name; } })()"
        assert await frame.evaluate(cookie) == "SecurityError"
        await frame.evaluate("document.getElementById('increment').click()")  # its own script.js runs
        await frame.wait_for("document.getElementById('count').textContent === '1'")
    await screenshot(page, "done-preview")
    assert js_errors == [], js_errors

    # The run's previewUrl (what the CLI prints) opened in a tab of the signed-in browser: it
    # lands on the preview link, sandboxed, and the generated code cannot call the API as the user.
    done = (await api.get(f"/runs/{await run_id_of(ai)}/events")).text
    preview_url = json.loads(done.rsplit("data: ", 1)[1])["previewUrl"]
    assert preview_url == f"/apps/{app['id']}/preview/"
    tab = await page.context.new_page()
    await tab.goto(f"{server.url}{preview_url}")
    assert tab.url == f"{server.url}{app['previewLink']}"
    await expect(tab.locator("h1")).to_have_text("Click Counter")
    assert await tab.evaluate("self.origin") == "null"
    api_call = "fetch('/apps', {credentials: 'include'}).then(r => r.status, error => error.name)"
    assert await tab.evaluate(api_call) == "TypeError"  # cross-origin, no cookie, no CORS grant
    await tab.close()


async def test_a_quick_start_button_creates_an_app_whose_run_shows_the_template(
    server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page, js_errors: list[str]
) -> None:
    page = signed_in_page
    trigger = "Build me a personal portfolio website"
    button = page.locator("#quick-start button", has_text=re.compile(f"^{re.escape(trigger)}$"))
    await button.click()

    await page.wait_for_url(re.compile(r"#/apps/[0-9a-f]{16}$"))
    app_id = page.url.rpartition("/")[2]
    await expect(page.locator("#app-title")).to_have_text(re.compile(r"· vue_project$"))
    await expect(page.locator("#app-list a[aria-current=page]")).to_have_attribute("data-id", app_id)
    apps = (await api.get("/apps")).json()
    assert [(a["id"], a["codeGenType"], a["initPrompt"]) for a in apps] == [(app_id, "vue_project", trigger)]

    ai = page.locator(AI)
    await expect(ai).to_have_count(1)
    await expect(ai.locator(".badge")).to_have_text("template: portfolio")
    await wait_done(ai)  # builds are disabled in tests: the run ends with a skipped build
    run = (await api.get(f"/runs/{await run_id_of(ai)}")).json()
    assert run["appId"] == app_id, run
    assert run["status"] == "completed", run
    assert await page.locator("#messages li.msg.user .reply").all_text_contents() == [trigger]
    assert js_errors == [], js_errors


async def test_stop_freezes_the_reply_and_offers_continue(
    server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page, js_errors: list[str], screenshot: Screenshot
) -> None:
    page = signed_in_page
    app = await create_app(api, "html", name="long answer")
    await open_app(page, server.url, app["id"])
    ai = await send(page, "tell me everything [sim:long_text tokens=3000 pace=20]")
    primary = page.locator("#primary")
    await expect(primary).to_have_attribute("data-kind", "stop")
    await expect(primary).to_have_text("■ Stop")
    await expect(primary).to_have_attribute("title", "Stop the run (Esc)")
    await expect(page.locator("#rollback")).to_be_visible()
    await expect(ai.locator(".reply")).to_have_text(re.compile(r"(\S+\s+){20}"))
    await screenshot(page, "streaming")

    await primary.click()
    shown = await ai.locator(".reply").text_content()
    await expect(primary).to_have_attribute("data-kind", "continue")
    await expect(primary).to_have_text("▶ Continue")
    await expect(ai.locator(".status")).to_have_text("stopped")
    await expect(page.locator("#rollback")).to_be_hidden()
    run_id = await run_id_of(ai)
    run = await wait_for_status(api, run_id, "interrupted")
    assert run["stopReason"] == "user_stop", run
    assert run["usage"]["completionTokens"] < 3000, run  # stopped well before the end
    # The run has ended on the server: whatever it sent after the click was never painted.
    assert await ai.locator(".reply").text_content() == shown
    await screenshot(page, "stopped")
    assert js_errors == [], js_errors


async def test_a_long_reply_scrolls_inside_the_chat_keeping_the_composer_and_preview_in_view(
    server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page, js_errors: list[str]
) -> None:
    # Only #messages scrolls: a page that grows with the reply pushes the Stop button below the
    # fold and scrolls the header and the preview away.
    page = signed_in_page
    app = await create_app(api, "html", name="long answer")
    await open_app(page, server.url, app["id"])
    ai = await send(page, "a long answer [sim:long_text tokens=800 pace=1]")
    await wait_done(ai)
    assert js_errors == [], js_errors
    layout = await page.evaluate(
        """() => {
          const messages = document.getElementById("messages");
          return {
            documentScrolls: document.scrollingElement.scrollHeight > innerHeight,
            messagesScroll: messages.scrollHeight > messages.clientHeight,
            atTheEnd: messages.scrollTop + messages.clientHeight >= messages.scrollHeight - 1,
            primaryBottom: document.getElementById("primary").getBoundingClientRect().bottom,
            previewTop: document.getElementById("preview").getBoundingClientRect().top,
            innerHeight,
          };
        }"""
    )
    assert layout["messagesScroll"], layout  # the reply is longer than the chat column
    assert layout["atTheEnd"], layout  # following the reply
    assert not layout["documentScrolls"], layout
    assert layout["primaryBottom"] <= layout["innerHeight"], layout  # the button stays in view
    assert layout["previewTop"] >= 0, layout
