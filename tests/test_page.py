"""What the chat page needs from the server besides the API: the page, its modules, the presets."""

from __future__ import annotations

import httpx

from tests.support import ServerThread, collect, gen_url, open_stream


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


async def test_preview_link_serves_the_site_without_the_cookie(client: httpx.AsyncClient, server: ServerThread) -> None:
    created = (await client.post("/apps", json={"name": "site", "codeGenType": "multi_file"})).json()
    assert created["previewReady"] is False
    link = created["previewLink"]
    async with open_stream(client, "GET", gen_url(created["id"], "a counter site")) as (_, events):
        assert (await collect(events))[-1].event == "done"
    assert (await client.get(f"/apps/{created['id']}")).json()["previewReady"] is True

    async with httpx.AsyncClient(base_url=server.url) as anonymous:  # no cookie, no token
        page = await anonymous.get(link)
        assert page.status_code == 200
        assert "<title>Click Counter</title>" in page.text
        # Opened anywhere, the generated code runs sandboxed, in an opaque origin.
        assert page.headers["content-security-policy"].startswith("sandbox allow-scripts")
        assert "cross-origin-resource-policy" not in page.headers  # its own files must load
        style = await anonymous.get(f"{link}style.css")
        assert style.status_code == 200
        assert style.headers["content-type"].startswith("text/css")
        assert (await anonymous.get(link.rstrip("/"))).status_code in (301, 302, 303, 307, 308)
        wrong_key = link.replace(link.split("/")[3], "0" * 32)
        assert (await anonymous.get(wrong_key)).status_code == 404
        other = (await client.post("/apps", json={"name": "other"})).json()
        borrowed = f"/preview/{other['id']}/{link.split('/')[3]}/"  # a key is only good for its app
        assert (await anonymous.get(borrowed)).status_code == 404
        assert (await anonymous.get(f"{link}..%2F..%2Fpreview-key")).status_code in (400, 404)
