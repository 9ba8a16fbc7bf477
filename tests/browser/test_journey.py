"""The user's whole journey in a real browser, with real builds, for each kind of site.

Prompt → the template badge → the build's output → the preview shows the site's own heading in
the page's iframe → a stop with rollback (during a real `vite build` for a Vue app, during the
answer for a static site) → the run ends `interrupted` with its files as they were → revert to
the completed run's checkpoint → the preview shows the site again; and no console error anywhere.

The Vue build the stop lands in is the simulator's `slow_build` scenario: a vite.config.js that
prints a line and then waits, so the test stops it at a known point instead of racing a build
that takes ~3 s.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest

from app.settings import Settings
from tests.browser.conftest import BUILD_MS, building_server
from tests.browser.test_panels import AI, IframeTarget, expect, run_id_of, send, wait_done
from tests.support import ServerThread, wait_for_status

if TYPE_CHECKING:
    from playwright.async_api import Browser, Locator, Page

PORTFOLIO = "Build me a personal portfolio website"  # the Vue preset's quick-start prompt
LANDING = "Make a landing page for my product launch"  # the multi_file preset's
WAITING = "build output: slow build: waiting to be stopped"  # the slow_build scenario's line


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    yield from building_server(settings)


# -- the steps of the journey ---------------------------------------------------------------


async def quick_start(page: Page, prompt: str) -> str:
    """Click a quick-start prompt; the new app's id."""
    await page.locator("#quick-start button", has_text=re.compile(f"^{re.escape(prompt)}$")).click()
    await page.wait_for_url(re.compile(r"#/apps/[0-9a-f]{16}$"))
    return page.url.rpartition("/")[2]


async def create_from_the_form(page: Page, prompt: str, code_gen_type: str) -> str:
    """Describe an app in the "New app" form with a generation type; the new app's id."""
    await page.fill("#new-prompt", prompt)
    await page.select_option("#new-type", code_gen_type)
    await page.locator("#new-app button[type=submit]").click()
    await page.wait_for_url(re.compile(r"#/apps/[0-9a-f]{16}$"))
    return page.url.rpartition("/")[2]


async def the_preview_shows(browser: Browser, page: Page, server: ServerThread, heading: str) -> None:
    """The page's iframe, at the URL the page last gave it, renders `heading` as its h1."""
    shows_link = "(document.getElementById('preview').getAttribute('src') || '').includes('/preview/')"
    await page.wait_for_function(shows_link)
    src = await page.locator("#preview").get_attribute("src")
    assert src is not None
    async with IframeTarget.attach(browser, f"{server.url}{src}") as frame:
        found = f"(document.querySelector('h1') || {{}}).textContent?.startsWith({json.dumps(heading)}) === true"
        await frame.wait_for(found)
        assert await frame.evaluate("self.origin") == "null"  # the opaque-origin sandbox


async def stop_with_rollback(page: Page, api: httpx.AsyncClient, ai: Locator) -> dict[str, Any]:
    """Press "Stop & roll back" while the run is live; the interrupted run."""
    await expect(page.locator("#primary")).to_have_attribute("data-kind", "stop")
    await page.locator("#rollback").click()
    await expect(ai.locator(".status")).to_have_text("stopped, files rolled back")
    await expect(page.locator("#primary")).to_have_attribute("data-kind", "continue")
    run = await wait_for_status(api, await run_id_of(ai), "interrupted")
    assert run["stopReason"] == "user_stop", run
    return run


async def revert_to(page: Page, run_id: str, prompt: str) -> None:
    """Revert to the run's checkpoint, from its entry (labelled by time, prompt and files changed)."""
    entry = page.locator("#checkpoints li", has_text=prompt[:20])
    await expect(entry).to_have_count(1)
    await expect(entry).to_contain_text(re.compile(r"\d{1,2}:\d{2}.*· [1-9]\d* files? changed"))
    before = await page.locator("#preview").get_attribute("src")
    await entry.get_by_role("button", name="revert").click()
    await expect(page.locator("#notice")).to_have_text(f"Files restored to run {run_id}.")
    await page.wait_for_function(
        "before => document.getElementById('preview').getAttribute('src') !== before", arg=before
    )


async def files_of(api: httpx.AsyncClient, app_id: str) -> dict[str, str]:
    listed = (await api.get(f"/apps/{app_id}/files")).json()
    paths = [f["path"] for f in listed if f["kind"] == "file"]
    return {path: (await api.get(f"/apps/{app_id}/files/{path}")).json()["content"] for path in paths}


# -- the journeys ---------------------------------------------------------------------------


async def test_a_vue_app_builds_renders_stops_during_a_build_rolls_back_and_reverts(
    server: ServerThread, api: httpx.AsyncClient, browser: Browser, signed_in_page: Page, js_errors: list[str]
) -> None:
    page = signed_in_page
    app_id = await quick_start(page, PORTFOLIO)
    first = page.locator(AI).first
    await expect(first.locator(".badge")).to_have_text("template: portfolio")
    await wait_done(first, timeout_ms=BUILD_MS)
    output = first.locator("details.build pre")
    await expect(output).to_contain_text(re.compile(r"^install finished", re.MULTILINE))
    await expect(output).to_contain_text(re.compile(r"^build output: .*built in", re.MULTILINE))
    await expect(output).to_contain_text(re.compile(r"^build finished", re.MULTILINE))
    await the_preview_shows(browser, page, server, "Hi, I'm")
    built = await files_of(api, app_id)

    # A second run rewrites vite.config.js, and its build waits there: the stop lands in `vite build`.
    second = await send(page, "[sim:slow_build] tune the build")
    await expect(second.locator("details.build pre")).to_contain_text(WAITING, timeout=BUILD_MS)
    await stop_with_rollback(page, api, second)
    assert await files_of(api, app_id) == built  # vite.config.js as the first run left it
    await revert_to(page, await run_id_of(first), PORTFOLIO)
    await the_preview_shows(browser, page, server, "Hi, I'm")  # the first run's build, still served
    assert js_errors == [], js_errors


async def test_a_multi_file_site_from_a_quick_start_renders_stops_rolls_back_and_reverts(
    server: ServerThread, api: httpx.AsyncClient, browser: Browser, signed_in_page: Page, js_errors: list[str]
) -> None:
    page = signed_in_page
    app_id = await quick_start(page, LANDING)
    first = page.locator(AI).first
    await expect(first.locator(".badge")).to_have_text("template: landing")
    await static_site_journey(page, api, browser, server, app_id, first, LANDING)
    assert js_errors == [], js_errors


async def test_a_single_html_page_from_the_form_renders_stops_rolls_back_and_reverts(
    server: ServerThread, api: httpx.AsyncClient, browser: Browser, signed_in_page: Page, js_errors: list[str]
) -> None:
    page = signed_in_page
    prompt = "a click counter page"
    app_id = await create_from_the_form(page, prompt, "html")
    first = page.locator(AI).first
    await static_site_journey(page, api, browser, server, app_id, first, prompt)
    await expect(first.locator(".badge")).to_have_count(0)  # no preset is a single html page
    assert js_errors == [], js_errors


async def static_site_journey(
    page: Page, api: httpx.AsyncClient, browser: Browser, server: ServerThread, app_id: str, first: Locator, prompt: str
) -> None:
    """A static site has nothing to build: its files are the answer's blocks, the stop lands in
    the answer of a second run, and the files stay the first run's."""
    await wait_done(first)
    await expect(page.locator("#files")).to_contain_text("index.html")
    await the_preview_shows(browser, page, server, "Click Counter")  # what the simulated model wrote
    written = await files_of(api, app_id)

    second = await send(page, "[sim:long_text tokens=3000 pace=20] tell me more")
    await expect(second.locator(".reply")).to_have_text(re.compile(r"(\S+\s+){20}"))
    await stop_with_rollback(page, api, second)
    assert await files_of(api, app_id) == written
    await revert_to(page, await run_id_of(first), prompt)
    await the_preview_shows(browser, page, server, "Click Counter")
