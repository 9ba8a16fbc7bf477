from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.control.cancel import StopGate
from app.settings import BuildSettings, LimitSettings, LLMSettings, Settings

# PostgreSQL and Redis, for the tests that need them (skip, or fail under RUNFORGE_REQUIRE_SERVICES=1).
from tests.services import pg_database_url, redis_url  # noqa: F401
from tests.support import ServerThread
from tests.workspace_kit import make_workspace

LOOPBACK = ("127.0.0.1", "::1", "localhost")


@pytest.fixture(autouse=True)
def _no_real_llm(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any connection to a host other than loopback fails: no test can reach a real LLM."""
    real_getaddrinfo = socket.getaddrinfo

    def loopback_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host not in LOOPBACK and not str(host).startswith("127."):
            raise OSError(f"tests may not reach {host!r}: only loopback is allowed")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "RUNFORGE_LLM_BASE_URL", "RUNFORGE_LLM_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def test_database_url(request: pytest.FixtureRequest) -> str | None:
    """None: each test server gets a fresh SQLite file (the default). With
    RUNFORGE_TEST_DATABASE=postgresql, a fresh PostgreSQL database instead: the whole suite
    then runs on PostgreSQL (`RUNFORGE_TEST_DATABASE=postgresql make test`)."""
    if os.environ.get("RUNFORGE_TEST_DATABASE", "sqlite") != "postgresql":
        return None
    url: str = request.getfixturevalue("pg_database_url")
    return url


@pytest.fixture
def settings(tmp_path: Path, test_database_url: str | None) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        database_url=test_database_url,
        llm=LLMSettings(max_retries=0, timeout_s=30.0),
        simulator_pace_ms=2.0,
        sse_ping_s=5.0,
        gc_freeze=False,  # process-wide; the test process starts many servers
        # npm builds are tested where they are the subject (test_build, test_codegen): elsewhere
        # a vue_project run ends with a `build` event saying "skipped".
        build=BuildSettings(enabled=False),
    )


@pytest.fixture
def server(settings: Settings) -> Iterator[ServerThread]:
    thread = ServerThread(settings).start()
    yield thread
    thread.stop()


@pytest.fixture
def unlimited_server(settings: Settings) -> Iterator[ServerThread]:
    """A server without rate limits, for a module's `server` when it sends hundreds of starts and
    stops a minute (stress and fuzz tests)."""
    unlimited = LimitSettings(max_active_runs_per_user=0, gen_per_minute=0, stops_per_minute=0)
    thread = ServerThread(settings.with_overrides(limits=unlimited)).start()
    yield thread
    thread.stop()


@pytest.fixture
def token(server: ServerThread) -> str:
    return server.add_user("alice")


@pytest.fixture
async def client(server: ServerThread, token: str) -> AsyncIterator[httpx.AsyncClient]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30.0) as http:
        yield http


@pytest.fixture
async def other_client(server: ServerThread) -> AsyncIterator[httpx.AsyncClient]:
    """A second, unrelated user."""
    headers = {"Authorization": f"Bearer {server.add_user('mallory')}"}
    async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30.0) as http:
        yield http


@pytest.fixture
async def app_id(client: httpx.AsyncClient) -> str:
    # vue_project: the type whose runs use the file tools, which most run-control tests exercise.
    response = await client.post("/apps", json={"name": "test app", "codeGenType": "vue_project"})
    assert response.status_code == 201, response.text
    app_id: str = response.json()["id"]
    return app_id


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    """A workspace with a small project and symlinks planted to lead outside it."""
    return make_workspace(tmp_path)


@pytest.fixture
def gate() -> StopGate:
    return StopGate()
