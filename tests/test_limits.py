"""Per-user limits: run starts and stops per minute (429 with Retry-After), runs active at once,
and CORS, which is off unless configured. Each limit leaves other users and the server alone."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import httpx
import openai
import pytest

from app.limits import LimitSettings
from app.settings import Settings
from tests.support import ServerThread, collect, gen_url, open_stream, wait_for_status
from tests.test_agent_ws import agent

LONG = "[sim:long_text pace=20 tokens=100000]"


@dataclasses.dataclass
class Limited:
    server: ServerThread
    alice: httpx.AsyncClient
    bob: httpx.AsyncClient
    alice_token: str

    async def new_app(self, client: httpx.AsyncClient | None = None) -> str:
        response = await (client or self.alice).post("/apps", json={"name": "x", "codeGenType": "vue_project"})
        assert response.status_code == 201, response.text
        app_id: str = response.json()["id"]
        return app_id


@pytest.fixture
def limited(settings: Settings) -> Iterator[Callable[..., AbstractAsyncContextManager[Limited]]]:
    threads: list[ServerThread] = []

    @asynccontextmanager
    async def start(**limits: int) -> AsyncIterator[Limited]:
        changed = dataclasses.replace(settings, limits=dataclasses.replace(LimitSettings(), **limits))
        thread = ServerThread(changed).start()
        threads.append(thread)
        alice, bob = thread.add_user("alice"), thread.add_user("bob")
        async with (
            httpx.AsyncClient(base_url=thread.url, headers={"Authorization": f"Bearer {alice}"}, timeout=30) as a,
            httpx.AsyncClient(base_url=thread.url, headers={"Authorization": f"Bearer {bob}"}, timeout=30) as b,
        ):
            yield Limited(thread, a, b, alice)

    yield start
    for thread in threads:
        thread.stop()


def assert_rate_limited(response: httpx.Response, code: str = "rate_limited") -> None:
    assert response.status_code == 429, response.text
    error = response.json()["error"]  # Runforge's shape, or OpenAI's under /v1
    assert (error["code"] if isinstance(error, dict) else error) == code
    assert int(response.headers["retry-after"]) >= 1


async def gen(client: httpx.AsyncClient, app_id: str, run_id: str) -> httpx.Response:
    async with open_stream(client, "GET", gen_url(app_id, "hi [sim:long_text tokens=3]", runId=run_id)) as (
        response,
        events,
    ):
        if response.status_code == 200:
            assert (await collect(events))[-1].event == "done"
        else:
            await response.aread()
        return response


async def test_run_starts_past_the_minutes_budget_get_429_and_start_nothing(limited: Callable[..., Limited]) -> None:
    async with limited(gen_per_minute=3) as site:
        app_id = await site.new_app()
        for i in range(3):
            assert (await gen(site.alice, app_id, f"g{i}")).status_code == 200
        refused = await gen(site.alice, app_id, "g3")
        assert_rate_limited(refused)
        assert 15 <= int(refused.headers["retry-after"]) <= 20  # one start every 20 s
        assert (await site.alice.get("/runs/g3")).status_code == 404  # nothing was started
        # Another user has a budget of their own; the server is fine.
        assert (await gen(site.bob, await site.new_app(site.bob), "b0")).status_code == 200
        assert (await site.alice.get("/healthz")).status_code == 200


async def test_stop_requests_past_the_minutes_budget_get_429(limited: Callable[..., Limited]) -> None:
    async with limited(stops_per_minute=2) as site:
        app_id = await site.new_app()
        async with open_stream(site.alice, "GET", gen_url(app_id, f"essay {LONG}", runId="s1")) as (_, events):
            await collect(events, until=lambda e: e.event == "message")
            assert (await site.alice.post("/runs/unknown/stop")).status_code == 202  # pending; counts as one
            assert (await site.alice.post("/app/chat/stop", json={"runId": "s1"})).status_code == 202
            assert_rate_limited(await site.alice.post("/app/chat/stop", json={"runId": "s1"}))
            assert_rate_limited(await site.alice.post("/v1/interrupt", json={"requestId": "s1"}))
            assert (await collect(events))[-1].event == "interrupted"


async def test_runs_active_at_once_are_capped_per_user_and_a_stop_frees_a_place(
    limited: Callable[..., Limited],
) -> None:
    async with limited(max_active_runs_per_user=2) as site:
        apps = [await site.new_app() for _ in range(3)]
        async with (
            open_stream(site.alice, "GET", gen_url(apps[0], f"essay {LONG}", runId="c0")) as (_, first),
            open_stream(site.alice, "GET", gen_url(apps[1], f"essay {LONG}", runId="c1")) as (_, second),
        ):
            await collect(first, until=lambda e: e.event == "run")
            await collect(second, until=lambda e: e.event == "run")
            third = await gen(site.alice, apps[2], "c2")
            assert_rate_limited(third, code="too_many_runs")
            assert "2 runs" in third.json()["message"]
            # A new run on a busy app replaces that app's run: it needs no extra place.
            assert (await gen(site.alice, apps[1], "c1-again")).status_code == 200
            assert (await collect(second))[-1].data["reason"] == "superseded"
            # Bob is not affected by Alice's runs.
            assert (await gen(site.bob, await site.new_app(site.bob), "b0")).status_code == 200
            assert (await site.alice.post("/app/chat/stop", json={"runId": "c0"})).status_code == 202
            await collect(first)
        await wait_for_status(site.alice, "c0", "interrupted")
        assert (await gen(site.alice, apps[2], "c2")).status_code == 200


async def test_the_openai_endpoint_answers_429_in_openais_shape_with_retry_after(
    limited: Callable[..., Limited],
) -> None:
    async with limited(gen_per_minute=1) as site:
        client = openai.AsyncOpenAI(base_url=f"{site.server.url}/v1", api_key=site.alice_token, max_retries=0)
        messages = [{"role": "user", "content": "[sim:long_text tokens=3] hi"}]
        first = await client.chat.completions.create(model="runforge-sim", messages=messages)  # type: ignore[arg-type]
        assert first.choices[0].message.content
        with pytest.raises(openai.RateLimitError) as refused:
            await client.chat.completions.create(model="runforge-sim", messages=messages)  # type: ignore[arg-type]
        assert int(refused.value.response.headers["retry-after"]) >= 1
        assert refused.value.code == "rate_limited"
        await client.close()


async def test_body_size_limits_are_configurable(settings: Settings) -> None:
    small = dataclasses.replace(settings, max_body_bytes=4096, max_chat_body_bytes=8192)
    thread = ServerThread(small).start()
    try:
        token = thread.add_user("carol")
        async with httpx.AsyncClient(base_url=thread.url, headers={"Authorization": f"Bearer {token}"}) as http:
            fits = await http.post("/apps", json={"name": "x" * 100, "codeGenType": "html"})
            over = await http.post("/apps", json={"name": "x" * 5000, "codeGenType": "html"})
            messages = [{"role": "user", "content": "x" * 9000}]
            chat = await http.post("/v1/chat/completions", json={"model": "m", "messages": messages})
            assert (await http.get("/healthz")).status_code == 200
    finally:
        thread.stop()
    assert fits.status_code == 201, fits.text
    assert (over.status_code, over.json()["error"]) == (413, "too_large")
    assert chat.status_code == 413, chat.text
    assert chat.json()["error"]["type"] == "invalid_request_error"


async def test_cors_is_off_unless_origins_are_configured(settings: Settings) -> None:
    preflight = {"Origin": "https://ide.example", "Access-Control-Request-Method": "POST"}
    for origins, allowed in (((), False), (("https://ide.example",), True)):
        thread = ServerThread(dataclasses.replace(settings, cors_origins=origins)).start()
        try:
            async with httpx.AsyncClient(base_url=thread.url) as http:
                answer = await http.options("/app/chat/stop", headers=preflight)
                simple = await http.get("/healthz", headers={"Origin": "https://ide.example"})
                other = await http.get("/healthz", headers={"Origin": "https://evil.example"})
        finally:
            thread.stop()
        assert (answer.headers.get("access-control-allow-origin") == "https://ide.example") is allowed
        assert (simple.headers.get("access-control-allow-origin") == "https://ide.example") is allowed
        assert "access-control-allow-origin" not in other.headers


async def test_the_agent_socket_answers_error_rate_limited_and_stays_open(limited: Callable[..., Limited]) -> None:
    async with limited(gen_per_minute=1, stops_per_minute=1) as site:
        app_id = await site.new_app()
        async with agent(site.server, site.alice_token) as socket:
            await socket.request(app_id, f"essay {LONG}", requestId="w1")
            await socket.until_texts("w1", 1)
            await socket.request(app_id, "again", requestId="w2")
            refused = await socket.next_of_type("ERROR")
            assert (refused["code"], refused.get("requestId")) == ("rate_limited", "w2")
            await socket.interrupt("w1")
            assert (await socket.next_of_type("INTERRUPT_ACK"))["status"] == "SUCCESS"
            await socket.interrupt("w1")
            refused = await socket.next_of_type("ERROR")
            assert (refused["code"], refused.get("requestId")) == ("rate_limited", "w1")
            assert (await socket.until_terminal("w1"))[-1]["type"] == "INTERRUPTED"
