"""The chat's run control in a real Chromium: send, stop (click, Enter, Esc), continue, send again.

What the page shows is tied to runs through the AI message's data-run-id: a MutationObserver
records every paint of every AI reply with the run id the message carried at that moment, so a
test can say "this message never showed a word of that run", not only "it looks right now".
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import httpx
import pytest
import pytest_asyncio

from app.simulator import SCENARIOS, Params, Turn
from tests.support import HANG_TIMEOUT_S, ServerThread, wait_for_status

with contextlib.suppress(ImportError):  # without playwright, the `browser` fixture skips (or fails) with the reason
    from playwright.async_api import expect

if TYPE_CHECKING:
    from playwright.async_api import Locator, Page

LONG = "[sim:long_text tokens=3000 pace=20]"  # 60 s of prose: long enough to stop mid-way
PROSE = SCENARIOS["long_text"].reply(Turn(0, Params(tokens=3000))).text  # what LONG streams, word by word
PAGE_REPLY = SCENARIOS["page"].reply(Turn(0, Params(), "html")).text  # what `[sim:page]` answers an html app
INTRO = PAGE_REPLY.split("\n", 1)[0]  # "Here is a small click-counter site. Everything is in one file."
MIN_TEXT = 80  # characters of reply shown before a test stops the run
AI = "#messages li.msg.ai"

# Installed once the app is open. window.__paints: every change of an AI reply's text or run id,
# as {index, runId, text}. window.__textAtAction: the last AI reply's text when the latest click
# or key press reached the document (capture phase: before the page's own handlers ran).
WATCH = """() => {
  window.__paints = [];
  const last = new Map();
  const record = () => {
    document.querySelectorAll("#messages li.msg.ai").forEach((li, index) => {
      const paint = { index, runId: li.dataset.runId || "", text: li.querySelector(".reply").textContent };
      const previous = last.get(li);
      if (previous && previous.runId === paint.runId && previous.text === paint.text) return;
      last.set(li, paint);
      window.__paints.push(paint);
    });
  };
  new MutationObserver(record).observe(document.getElementById("messages"), {
    subtree: true, childList: true, characterData: true, attributes: true, attributeFilter: ["data-run-id"],
  });
  const atAction = () => {
    const replies = document.querySelectorAll("#messages li.msg.ai .reply");
    window.__textAtAction = replies.length ? replies[replies.length - 1].textContent : null;
  };
  document.addEventListener("click", atAction, true);
  document.addEventListener("keydown", atAction, true);
}"""


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest_asyncio.fixture(loop_scope="session")
async def api(server: ServerThread, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """The `token` user's HTTP client, on the browser tests' loop."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=HANG_TIMEOUT_S) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def chat(server: ServerThread, api: httpx.AsyncClient, signed_in_page: Page) -> Page:
    """The signed-in page showing a new, empty html app, with WATCH installed."""
    created = await api.post("/apps", json={"name": "chat test", "codeGenType": "html"})
    assert created.status_code == 201, created.text
    page = signed_in_page
    await page.goto(f"{server.url}/#/apps/{created.json()['id']}")
    await expect(page.locator("#app-title")).to_have_text("chat test · html")
    await expect(page.locator("#primary")).to_have_attribute("data-kind", "send")  # messages loaded
    await page.evaluate(WATCH)
    return page


async def expect_button(page: Page, kind: str, label: str, title: str | None = None) -> None:
    button = page.locator("#primary")
    await expect(button).to_have_attribute("data-kind", kind)
    await expect(button).to_have_text(label)
    await expect(button).to_have_attribute("aria-label", label.lstrip("■▶ "))
    if title is not None:
        await expect(button).to_have_attribute("title", title)


async def send(page: Page, text: str, *, by: str, long: bool = True) -> tuple[Locator, str]:
    """Type text and send it (by "click" or "Enter"); return the new AI message and its run id.

    long: the run lasts (the button must show "stop"); a short one may be over before a check.
    """
    ai = page.locator(AI).nth(await page.locator(AI).count())
    await page.locator("#input").fill(text)
    await expect_button(page, "send", "Send", "Send (Enter)")
    if by == "click":
        await page.locator("#primary").click()
    else:
        await page.keyboard.press(by)  # fill() left the focus in the input
    await expect(ai).to_have_attribute("data-run-id", re.compile(r"^[0-9a-f]{32}$"))
    if long:
        await expect_button(page, "stop", "■ Stop", "Stop the run (Esc)")
    await expect(page.locator("#input")).to_have_value("")
    await expect(page.locator("#input")).to_be_focused()
    run_id = await ai.get_attribute("data-run-id")
    assert run_id is not None
    return ai, run_id


async def stop(page: Page, ai: Locator, *, by: str) -> str:
    """Once the reply shows some text, stop by "click", "Enter" or "Escape"; return the text at that moment."""
    await expect(ai.locator(".reply")).to_have_text(re.compile(f".{{{MIN_TEXT},}}"))
    if by == "click":
        await page.locator("#primary").click()
    else:
        await expect(page.locator("#input")).to_be_focused()
        await page.keyboard.press(by)
    await expect(ai.locator(".status")).to_have_text("stopped")
    await expect(page.locator("#input")).to_be_focused()
    frozen = await page.evaluate("window.__textAtAction")
    assert isinstance(frozen, str)
    assert len(frozen) >= MIN_TEXT, frozen
    assert PROSE.startswith(frozen), frozen
    return frozen


async def check_stopped(
    server: ServerThread,
    api: httpx.AsyncClient,
    ai: Locator,
    run_id: str,
    frozen: str,
    reasons: tuple[str, ...] = ("user_stop",),
) -> None:
    """The reply stays as it was when stopped; the server interrupted the run and closed its upstream."""
    await asyncio.sleep(0.5)  # the assertion: nothing more is painted 500 ms after the stop
    assert await ai.locator(".reply").text_content() == frozen
    assert await ai.get_attribute("data-run-id") == run_id
    view = await wait_for_status(api, run_id, "interrupted")
    assert view["stopReason"] in reasons, view
    await server.sim_records(run_id, lambda rs: bool(rs) and rs[-1].disconnected_at is not None)


async def paints(page: Page, index: int) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = await page.evaluate("i => window.__paints.filter(p => p.index === i)", index)
    return found


# -- tests -------------------------------------------------------------------------------------


async def test_click_stop_freezes_the_reply_and_interrupts_the_run(
    chat: Page, server: ServerThread, api: httpx.AsyncClient, js_errors: list[str]
) -> None:
    page = chat
    ai, run_id = await send(page, LONG, by="click")
    frozen = await stop(page, ai, by="click")
    await expect_button(page, "continue", "▶ Continue", "Run the last message again (Enter)")
    await check_stopped(server, api, ai, run_id, frozen)
    assert max(len(p["text"]) for p in await paints(page, 0)) == len(frozen)  # not even one batch more
    await expect_button(page, "continue", "▶ Continue")
    assert js_errors == [], js_errors


@pytest.mark.parametrize("key", ["Enter", "Escape"])
async def test_a_key_in_the_input_stops_the_run(
    chat: Page, server: ServerThread, api: httpx.AsyncClient, js_errors: list[str], key: str
) -> None:
    page = chat
    ai, run_id = await send(page, LONG, by="Enter")
    frozen = await stop(page, ai, by=key)
    await expect_button(page, "continue", "▶ Continue")
    await check_stopped(server, api, ai, run_id, frozen)
    assert max(len(p["text"]) for p in await paints(page, 0)) == len(frozen)
    assert js_errors == [], js_errors


async def test_continue_resets_the_same_message_for_a_new_run(
    chat: Page, server: ServerThread, api: httpx.AsyncClient, js_errors: list[str]
) -> None:
    page = chat
    ai, first_run = await send(page, LONG, by="click")
    frozen = await stop(page, ai, by="click")
    await check_stopped(server, api, ai, first_run, frozen)
    element = await ai.element_handle()
    painted_before = len(await paints(page, 0))

    await expect_button(page, "continue", "▶ Continue")
    await page.locator("#primary").click()
    await expect_button(page, "stop", "■ Stop")
    await expect(page.locator("#input")).to_be_focused()
    await expect(ai.locator(".status")).to_have_text("")
    second_run = await ai.get_attribute("data-run-id")
    assert second_run is not None
    assert second_run != first_run
    # The new run streams the same prose from its start: wait until it is past the stopped text.
    await expect(ai.locator(".reply")).to_have_text(re.compile(f".{{{len(frozen) + 40},}}"))

    assert await page.evaluate("element => element === document.querySelector('#messages li.msg.ai')", element)
    await expect(page.locator(AI)).to_have_count(1)
    await expect(page.locator("#messages li.msg.user")).to_have_count(1)  # continue adds no message
    after = (await paints(page, 0))[painted_before:]
    # The first paint after the click: the new run id on an emptied reply (reset at once).
    assert after[0] == {"index": 0, "runId": second_run, "text": ""}, after[:3]
    for paint in after:
        assert paint["runId"] == second_run, paint
        assert PROSE.startswith(paint["text"]), paint  # the new run's text only, never after the old one
    records = await server.sim_records(second_run, bool)
    assert LONG in records[0].last_user_message

    await page.keyboard.press("Escape")  # leave no run behind
    assert (await wait_for_status(api, second_run, "interrupted"))["stopReason"] == "user_stop"
    assert js_errors == [], js_errors


async def test_a_run_sent_right_after_a_stop_never_shows_the_stopped_runs_text(
    chat: Page, server: ServerThread, api: httpx.AsyncClient, js_errors: list[str]
) -> None:
    page = chat
    old_ai, old_run = await send(page, LONG, by="click")
    frozen = await stop(page, old_ai, by="click")
    # At once, a different request (the html page answer, no prose in it): typed input makes it "send".
    new_ai, new_run = await send(page, "[sim:page] a click counter", by="Enter", long=False)
    assert new_run != old_run
    await expect(new_ai.locator(".status")).to_have_text(re.compile(r"^done"))
    # The page starts the next run only once its stop request is answered: the old run ends as
    # the user's stop, never superseded by the new one.
    await check_stopped(server, api, old_ai, old_run, frozen, ("user_stop",))

    text = await new_ai.locator(".reply").text_content()
    assert text is not None
    assert text.startswith(INTRO), text[:200]
    assert "<title>Click Counter</title>" in text
    assert text.endswith(PAGE_REPLY.rstrip().rsplit("\n", 1)[-1]), text[-200:]
    for paint in await paints(page, 1):
        if not paint["text"]:
            continue
        assert paint["runId"] == new_run, paint
        assert paint["text"].startswith(INTRO) or INTRO.startswith(paint["text"]), paint
        assert "simulated model" not in paint["text"], paint
    old_paints = await paints(page, 0)
    assert {p["runId"] for p in old_paints} == {old_run}
    assert max(len(p["text"]) for p in old_paints) == len(frozen)  # the old reply never grew after the stop
    await expect(old_ai.locator(".status")).to_have_text("stopped")
    assert await old_ai.locator(".reply").text_content() == frozen
    assert (await wait_for_status(api, new_run, "completed"))["stopReason"] is None
    await expect_button(page, "send", "Send", "Type a message first")
    assert js_errors == [], js_errors


async def test_typed_input_after_a_stop_makes_the_button_send(
    chat: Page, server: ServerThread, api: httpx.AsyncClient, js_errors: list[str]
) -> None:
    page = chat
    ai, run_id = await send(page, LONG, by="click")
    await stop(page, ai, by="Escape")
    await expect_button(page, "continue", "▶ Continue")
    await page.locator("#input").fill("something else")
    await expect_button(page, "send", "Send", "Send (Enter)")
    await page.locator("#input").fill("  \n ")  # only blanks: as if empty
    await expect_button(page, "continue", "▶ Continue")
    await page.locator("#input").fill("")
    await expect_button(page, "continue", "▶ Continue")
    assert (await wait_for_status(api, run_id, "interrupted"))["stopReason"] == "user_stop"
    assert js_errors == [], js_errors


async def test_empty_input_starts_nothing(chat: Page, server: ServerThread, js_errors: list[str]) -> None:
    page = chat
    gen_requests: list[str] = []
    page.on("request", lambda request: gen_requests.append(request.url) if "/app/chat/gen/" in request.url else None)
    notice = page.locator("#notice")
    await expect_button(page, "send", "Send", "Type a message first")
    await expect(notice).to_have_text("")

    await page.locator("#primary").click()
    await expect(notice).to_have_text("Type a message first, then press Enter.")
    await page.evaluate("document.getElementById('notice').textContent = ''")
    await page.locator("#input").fill("   ")
    await expect_button(page, "send", "Send", "Type a message first")
    await page.keyboard.press("Enter")
    await expect(notice).to_have_text("Type a message first, then press Enter.")

    # A request the page would have made is seen before a later one: make one and wait for it.
    async with page.expect_request(f"{server.url}/apps"):
        await page.evaluate("fetch('/apps')")
    assert gen_requests == []
    await expect(page.locator("#messages li.msg")).to_have_count(0)
    assert server.simulator.recorder.records() == []
    await expect_button(page, "send", "Send", "Type a message first")
    assert js_errors == [], js_errors
