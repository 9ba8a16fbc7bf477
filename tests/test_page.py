"""What the chat page needs from the server besides the API: the page, its modules, the presets."""

from __future__ import annotations

import httpx

from tests.support import ServerThread


async def test_the_page_and_its_modules_are_served(client: httpx.AsyncClient, server: ServerThread) -> None:
    page = await client.get("/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert '<script type="module" src="/static/app.js">' in page.text
    for module in ("app.js", "button.js", "render.js", "run-stream.js"):
        response = await client.get(f"/static/{module}")
        assert response.status_code == 200, module
        assert "javascript" in response.headers["content-type"]
        assert "no-cache" in response.headers["cache-control"]
    assert (await client.get("/static/style.css")).headers["content-type"].startswith("text/css")
    assert (await client.get("/static/../settings.py")).status_code == 404


async def test_templates_list_the_quick_start_prompts(client: httpx.AsyncClient, server: ServerThread) -> None:
    presets = {preset["name"]: preset for preset in (await client.get("/templates")).json()}
    assert set(presets) == {preset.name for preset in server.services.presets.presets}
    assert "Build me a personal portfolio website" in presets["portfolio"]["triggers"]
    assert presets["portfolio"]["codeGenType"] == "vue_project"
    async with httpx.AsyncClient(base_url=server.url) as anonymous:
        assert (await anonymous.get("/templates")).status_code == 401
