"""Real-browser tests: Playwright's async API driving Debian's chromium.

Playwright's own browser download does not run on our machines, so the tests launch
/usr/bin/chromium (or $RUNFORGE_CHROMIUM). Never run `playwright install`.

Without Chromium (or without the playwright package) the tests skip with the reason; with
RUNFORGE_REQUIRE_BROWSER=1 (set by .ci/run) they fail instead, so CI cannot pass by skipping.

One browser serves the whole session: launching it costs more than a test. Playwright objects
belong to the event loop that created them, so every async test in this directory runs on the
session's loop (see pytest_collection_modifyitems), and async fixtures that browser tests use
must be declared with loop_scope="session". The server, token and settings fixtures of
tests/conftest.py are synchronous and can be used as they are; its async fixtures (`client`,
`app_id`, ...) are set up and torn down on a function-scoped loop, not the test's: prefer the
server's HTTP API through `page.request`, or a session-loop fixture of your own.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
import pytest
import pytest_asyncio

from app.settings import BuildSettings, Settings
from tests.support import ServerThread

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Error, Page

CHROMIUM = "/usr/bin/chromium"
HERE = Path(__file__).resolve().parent
SCREENSHOT_DIR = HERE.parents[1] / "docs" / "img"
TIMEOUT_MS = 10_000  # a failing wait ends well before pytest-timeout's 60 s, with Playwright's own message
BUILD_MS = 180_000  # a cold npm install from the registry, then vite: generous, only against hangs

Screenshot = Callable[["Page", str], Awaitable[Path | None]]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A hook of this conftest still sees every collected item: mark only this directory's.
    session_loop = pytest.mark.asyncio(loop_scope="session")
    for item in items:
        if pytest_asyncio.is_async_test(item) and HERE in item.path.parents:
            item.add_marker(session_loop, append=False)


def _unavailable(reason: str) -> None:
    if os.environ.get("RUNFORGE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason} (RUNFORGE_REQUIRE_BROWSER=1: the browser tests may not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_path() -> str:
    """The browser to drive; skips (or fails, when it is required) when it or playwright is missing."""
    path = os.environ.get("RUNFORGE_CHROMIUM", CHROMIUM)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        _unavailable(
            f"Chromium not found at {path}: install Debian's chromium (apt-get install chromium) "
            "to run the browser tests"
        )
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        _unavailable("the playwright package is not installed: pip install -e '.[test]' to run the browser tests")
    return path


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def browser(chromium_path: str) -> AsyncIterator[Browser]:
    from playwright.async_api import async_playwright

    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=chromium_path,
            headless=True,
            # --no-sandbox: Chromium's sandbox cannot start as root in a container (Playwright
            # also adds it by default; it is explicit so that the launch does not depend on that).
            # --disable-dev-shm-usage: containers often have a 64 MB /dev/shm, too small for
            # Chromium's shared memory. Debian's /usr/bin/chromium wrapper means to add this flag
            # when /dev/shm is small, but its test breaks when /dev/shm is mounted twice.
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        yield browser
        await browser.close()


def building_server(settings: Settings) -> Iterator[ServerThread]:
    """A server that builds (every other browser test switches builds off): for a module's `server`.

    Skips when RUNFORGE_SKIP_NPM_BUILDS=1 (no npm, or no npm registry, on this machine)."""
    if os.environ.get("RUNFORGE_SKIP_NPM_BUILDS") == "1":
        pytest.skip("needs npm and the npm registry (RUNFORGE_SKIP_NPM_BUILDS=1)")
    builds = BuildSettings(install_timeout_s=BUILD_MS / 1000, build_timeout_s=120.0)
    thread = ServerThread(settings.with_overrides(build=builds)).start()
    yield thread
    thread.stop()


@pytest.fixture
def js_errors() -> list[str]:
    """What the page reported as errors: console.error messages and uncaught exceptions."""
    return []


@pytest_asyncio.fixture(loop_scope="session")
async def page(browser: Browser, js_errors: list[str]) -> AsyncIterator[Page]:
    """A fresh page in a context (cookies, storage) of its own, 1280x800."""
    context = await browser.new_context(viewport={"width": 1280, "height": 800})
    context.set_default_timeout(TIMEOUT_MS)

    def on_console(message: ConsoleMessage) -> None:
        # Chromium asks for /favicon.ico by itself and logs the 404 as an error: not the page's doing.
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            js_errors.append(f"console.error: {message.text} ({message.location})")

    def on_page_error(error: Error) -> None:
        js_errors.append(f"uncaught: {error}")

    page = await context.new_page()
    page.on("console", on_console)
    page.on("pageerror", on_page_error)
    yield page
    await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def signed_in_page(server: ServerThread, token: str, page: Page) -> Page:
    """`page`, signed in as the `token` user through the login URL, and showing `/`."""
    response = await page.goto(f"{server.url}/?token={token}")
    assert response is not None
    assert response.ok, f"sign-in failed: {response.status} {response.url}"
    # The server sets the HttpOnly cookie and redirects, dropping the token from the address bar.
    assert page.url == f"{server.url}/", page.url
    return page


@pytest.fixture
def screenshot() -> Screenshot:
    """`await screenshot(page, "name")` saves docs/img/name.png, only when RUNFORGE_SCREENSHOTS=1.

    Ordinary test runs never rewrite the tracked images; returns the path written, or None.
    """

    async def save(page: Page, name: str) -> Path | None:
        if os.environ.get("RUNFORGE_SCREENSHOTS") != "1":
            return None
        SCREENSHOT_DIR.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOT_DIR / f"{name.removesuffix('.png')}.png"
        await page.screenshot(path=path)
        return path

    return save


@pytest_asyncio.fixture(loop_scope="session")
async def api(server: ServerThread, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """The `token` user's HTTP client, on the browser tests' loop (of this module's `server`)."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30.0) as http:
        yield http
