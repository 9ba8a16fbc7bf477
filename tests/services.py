"""PostgreSQL and Redis for the tests that need them, and what happens when they are missing.

On the CI machine both run on 127.0.0.1 and `.ci/run` sets RUNFORGE_REQUIRE_SERVICES=1: a missing
service fails the test there, so CI cannot pass by skipping. Elsewhere (a laptop without them)
the tests skip and say why. RUNFORGE_TEST_PG_URL and RUNFORGE_TEST_REDIS_URL point them elsewhere.

The fixtures are registered for the whole suite in tests/conftest.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from typing import NoReturn

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

PG_URL = os.environ.get("RUNFORGE_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("RUNFORGE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CONNECT_TIMEOUT_S = 5.0


def services_required() -> bool:
    return os.environ.get("RUNFORGE_REQUIRE_SERVICES") == "1"


def require_service(name: str, reason: str) -> NoReturn:
    """Skip the test for want of `name`; fail it instead where services are required (CI)."""
    if services_required():
        pytest.fail(f"{reason} (RUNFORGE_REQUIRE_SERVICES=1: tests needing {name} may not skip)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture
async def redis_url() -> str:
    """REDIS_URL, once Redis answers a PING there."""
    import redis.asyncio as aioredis
    from redis.exceptions import RedisError

    client = aioredis.Redis.from_url(REDIS_URL, socket_connect_timeout=CONNECT_TIMEOUT_S)
    unreachable = None
    try:
        await client.ping()
    except (OSError, RedisError) as exc:
        unreachable = f"{exc.__class__.__name__}: {exc}"
    finally:
        await client.aclose()
    if unreachable is not None:  # outside the except block: the report need not show the chained error
        require_service("Redis", f"Redis not reachable at {REDIS_URL}: {unreachable}")
    return REDIS_URL


async def pg_admin(create: str) -> AsyncEngine:
    """An AUTOCOMMIT engine on PG_URL's server, once `create` (a CREATE statement) has run there;
    skips the test, or fails it where services are required, if the server is unreachable."""
    admin = create_async_engine(PG_URL, isolation_level="AUTOCOMMIT", connect_args={"timeout": CONNECT_TIMEOUT_S})
    unreachable = None
    try:
        async with admin.connect() as conn:
            await conn.execute(text(create))
    except (OSError, DBAPIError) as exc:
        unreachable = f"{exc.__class__.__name__}: {exc}"
    if unreachable is not None:
        await admin.dispose()
        require_service("PostgreSQL", f"PostgreSQL not reachable at {PG_URL}: {unreachable}")
    return admin


@pytest.fixture
async def pg_database_url() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database (`runforge_t_<hex>`) on PG_URL's server, dropped afterwards.

    A database rather than a schema: any process can use it with a plain URL (a CLI subprocess,
    a server), no search_path trick needed.
    """
    name = f"runforge_t_{uuid.uuid4().hex[:12]}"
    admin = await pg_admin(f'CREATE DATABASE "{name}"')
    try:
        yield make_url(PG_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        try:
            async with admin.connect() as conn:
                # FORCE: a server or pool the test left connected must not keep the database alive.
                await conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        finally:
            await admin.dispose()
