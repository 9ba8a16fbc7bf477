"""The browser harness works: the server's page loads in a real Chromium, signed out and in."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tests.support import ServerThread

if TYPE_CHECKING:
    from playwright.async_api import Page


async def test_signed_out_page_renders(server: ServerThread, page: Page, js_errors: list[str]) -> None:
    response = await page.goto(f"{server.url}/")
    assert response is not None
    assert response.status == 200
    assert "Runforge" in await page.title()
    assert "Runforge" in await page.locator("body").inner_text()
    assert js_errors == []


async def test_signed_in_page_loads_without_errors(signed_in_page: Page, js_errors: list[str]) -> None:
    page = signed_in_page
    await page.wait_for_load_state("networkidle")  # scripts the page starts have had their chance to fail
    assert "Runforge" in await page.title()
    # The HttpOnly cookie signed the browser in: it is not readable from scripts.
    cookies = await page.context.cookies()
    assert any(c["httpOnly"] for c in cookies), cookies
    assert await page.evaluate("document.cookie") == ""
    assert js_errors == [], js_errors
