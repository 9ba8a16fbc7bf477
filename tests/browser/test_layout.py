"""The page from 360 px to 1920 px, a run's changes from its checkpoint and its reply, and the reply's
paragraphs around tool calls (builds off: the simulator's runs are the subject here)."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import httpx
import pytest

from tests.browser.conftest import Screenshot
from tests.browser.test_panels import AI, create_app, expect, open_app, send, wait_done
from tests.support import ServerThread

if TYPE_CHECKING:
    from playwright.async_api import Page


async def box(page: Page, selector: str) -> dict[str, float]:
    found = await page.locator(selector).first.bounding_box()
    assert found is not None, f"{selector} is not shown"
    return found


@pytest.mark.parametrize(("width", "height"), [(360, 740), (760, 1000), (1280, 800), (1920, 1080)])
async def test_the_page_works_at_every_width(
    server: ServerThread,
    api: httpx.AsyncClient,
    signed_in_page: Page,
    js_errors: list[str],
    screenshot: Screenshot,
    width: int,
    height: int,
) -> None:
    page = signed_in_page
    await page.set_viewport_size({"width": width, "height": height})
    app = await create_app(api, "vue_project", name="a portfolio for a photographer with a long name")
    await open_app(page, server.url, app["id"])
    ai = await send(page, "Build me a personal portfolio website")
    await wait_done(ai)
    await expect(ai.locator(".badge")).to_have_text("template: portfolio")

    # Nothing wider than the window: no sideways scrolling at any width.
    overflow = await page.evaluate("document.documentElement.scrollWidth - document.documentElement.clientWidth")
    assert overflow <= 0, f"{overflow} px wider than the {width} px window"
    chat, message, badge = await box(page, "main.chat"), await box(page, AI), await box(page, f"{AI} .badge")
    # The chat has room to read: the whole width when the panels stack, else the middle column.
    assert chat["width"] >= min(width - 20, 480), chat
    assert badge["x"] + badge["width"] <= message["x"] + message["width"] + 0.5  # the badge stays inside
    composer = await box(page, "#input")
    assert composer["width"] >= min(width - 60, 400)
    if width < 900:  # stacked: the preview below the chat, full width
        preview = await box(page, "#preview")
        assert preview["y"] >= chat["y"] + chat["height"] - 1
        assert preview["width"] >= width - 60
    if width == 360:
        await screenshot(page, "phone")
    assert js_errors == [], js_errors


async def test_the_preview_opens_in_a_tab_and_can_be_widened(
    server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page, js_errors: list[str]
) -> None:
    page = signed_in_page
    app = await create_app(api, "multi_file")
    await open_app(page, server.url, app["id"])
    await wait_done(await send(page, "a counter site"))
    await expect(page.locator("#preview-open")).to_have_attribute("href", app["previewLink"])
    before = (await box(page, "#preview"))["width"]
    await page.locator("#preview-wide").click()
    await expect(page.locator("#preview-wide")).to_have_attribute("aria-pressed", "true")
    assert (await box(page, "#preview"))["width"] > before * 1.5
    assert js_errors == [], js_errors


async def test_a_runs_changes_show_from_its_checkpoint_and_its_reply(
    server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page, js_errors: list[str], screenshot: Screenshot
) -> None:
    page = signed_in_page
    app = await create_app(api, "multi_file")
    await open_app(page, server.url, app["id"])
    ai = await send(page, "a counter site with a big blue button")
    await wait_done(ai)
    # The checkpoint is labelled by its time, the prompt's first words and the files changed, not by a run id.
    entry = page.locator("#checkpoints li").first
    await expect(entry).to_contain_text(re.compile(r"\d{1,2}:\d{2}.*a counter site with a big.*· 3 files changed"))
    await entry.get_by_role("button", name="changes").click()
    view = page.locator("#diff-view")
    await expect(view).to_be_visible()
    await expect(view.locator("p")).to_contain_text(re.compile(r"3 files changed, \+\d+ −0"))
    await expect(view.locator("summary")).to_have_text(
        [
            re.compile(r"^added index\.html \+\d+ −0$"),
            re.compile(r"^added script\.js \+\d+ −0$"),
            re.compile(r"^added style\.css \+\d+ −0$"),
        ]
    )
    await view.locator("summary", has_text="index.html").click()
    await expect(view.locator("pre .add").first).to_be_visible()
    await screenshot(page, "run-diff")
    # The same from the run's reply, once it is done.
    await page.locator("#diff-view").evaluate("view => { view.hidden = true; }")
    await ai.get_by_role("button", name="see what changed").click()
    await expect(view).to_be_visible()
    assert js_errors == [], js_errors


async def test_text_after_a_tool_call_starts_a_new_paragraph(
    server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page, js_errors: list[str]
) -> None:
    page = signed_in_page
    app = await create_app(api, "vue_project")
    await open_app(page, server.url, app["id"])
    ai = await send(page, "Build me a personal portfolio website")  # the preset: look around, read, exit
    await wait_done(ai)
    paragraphs = await ai.locator(".reply p").all_text_contents()
    assert paragraphs[:2] == [
        "The workspace holds a preset project; let me look at it first.",
        "Reading the project manifest.",
    ], paragraphs
    assert js_errors == [], js_errors


async def test_an_empty_page_says_what_to_do(signed_in_page: Page) -> None:
    hint = await signed_in_page.evaluate("getComputedStyle(document.getElementById('messages'), '::before').content")
    assert "quick-start" in hint, hint
