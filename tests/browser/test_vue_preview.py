"""The flagship journey with a real build: a Vue preset built by npm in the sandbox, then rendered.

The quick-start prompt copies the portfolio preset, the run ends with a real `npm install` (from
the registry, or npm's cache) and `vite build`, and the preview shows the Vue app: its module
script and stylesheet load in the iframe's opaque origin (they are fetched in CORS mode, which the
preview link must allow), in the page's iframe and in a tab of its own.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import httpx
import pytest

from app.settings import Settings
from tests.browser.conftest import BUILD_MS, Screenshot, building_server
from tests.browser.test_panels import AI, IframeTarget, expect, run_id_of, wait_done
from tests.support import ServerThread

if TYPE_CHECKING:
    from playwright.async_api import Browser, ConsoleMessage, Page

HEADING = "Hi, I'm"  # the portfolio preset's hero heading, rendered by Vue


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    """This module's server builds: what every other browser test switches off."""
    yield from building_server(settings)


async def test_the_portfolio_preset_builds_and_renders_in_the_preview(
    server: ServerThread,
    api: httpx.AsyncClient,
    browser: Browser,
    signed_in_page: Page,
    js_errors: list[str],
    screenshot: Screenshot,
) -> None:
    page = signed_in_page
    await page.locator("#quick-start button", has_text="Build me a personal portfolio website").click()
    await page.wait_for_url(re.compile(r"#/apps/[0-9a-f]{16}$"))
    ai = page.locator(AI)
    await expect(ai.locator(".badge")).to_have_text("template: portfolio")
    await wait_done(ai, timeout_ms=BUILD_MS)
    run = (await api.get(f"/runs/{await run_id_of(ai)}")).json()
    assert run["status"] == "completed", run
    app = (await api.get(f"/apps/{page.url.rpartition('/')[2]}")).json()

    # In the page's iframe: Vue mounted (its module script ran) and the bundle's CSS applied.
    async with IframeTarget.attach(browser, f"{server.url}{app['previewLink']}") as frame:
        await frame.wait_for(f"(document.querySelector('h1') || {{}}).textContent?.startsWith({HEADING!r}) === true")
        assert await frame.evaluate("self.origin") == "null"  # still the opaque-origin sandbox
        assert await frame.evaluate("document.styleSheets.length") >= 1
        assert await frame.evaluate("getComputedStyle(document.body).margin") == "0px"  # the preset's reset
    await page.locator("#preview-wide").click()  # the picture in the README: the preview widened
    await screenshot(page, "vue-preview")
    assert js_errors == [], js_errors

    # In a tab of its own, from the address a run reports (previewUrl): redirected to the preview
    # link, where the CSP sandbox keeps the origin opaque, and it still renders.
    tab = await page.context.new_page()
    tab_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error" and not message.location.get("url", "").endswith("/favicon.ico"):
            tab_errors.append(message.text)

    tab.on("console", on_console)
    await tab.goto(f"{server.url}/apps/{app['id']}/preview/")
    assert tab.url == f"{server.url}{app['previewLink']}"
    await expect(tab.locator("h1")).to_contain_text(HEADING)
    assert await tab.evaluate("self.origin") == "null"
    assert tab_errors == [], tab_errors
    await tab.close()
