"""`python -m app ...` subprocesses (the real CLI), with an environment of the test's choosing."""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import os
import re
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.support import HANG_TIMEOUT_S

REPO = Path(__file__).resolve().parents[1]
EXIT_TIMEOUT_S = 10.0
# What a server must not print for an expected condition: a traceback, or uvicorn's error for a
# response the app left unfinished (a stalled reader, a stream cut at shutdown).
UNEXPECTED = re.compile(r"Traceback \(most recent call last\)|ASGI callable returned without completing response")


@dataclass
class Child:
    """A `python -m app ...` subprocess; stdout is read incrementally, stderr goes to a log file."""

    proc: asyncio.subprocess.Process
    log: Path
    output: str = ""
    # A test that makes a child fail on purpose says so; any other traceback fails the test.
    tracebacks_expected: bool = False
    _decoder: codecs.IncrementalDecoder = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")())

    async def expect(self, pattern: str) -> re.Match[str]:
        """Read stdout until `pattern` matches somewhere in everything printed so far."""
        regex = re.compile(pattern)
        async with asyncio.timeout(HANG_TIMEOUT_S):
            while (match := regex.search(self.output)) is None:
                if not await self._read():
                    raise AssertionError(f"stdout ended before {pattern!r}:\n{self.output}\n{self.stderr()}")
        return match

    async def finish(self) -> int:
        """Read stdout to its end and return the exit code."""
        async with asyncio.timeout(EXIT_TIMEOUT_S):
            while await self._read():
                pass
            return await self.proc.wait()

    def stderr(self) -> str:
        return "--- stderr:\n" + self.log.read_text(errors="replace")

    def unexpected_traceback(self) -> str | None:
        """The first traceback the child printed (stderr or stdout), unless one was expected."""
        text = self.log.read_text(errors="replace") + self.output
        found = UNEXPECTED.search(text)
        if found is None or self.tracebacks_expected:
            return None
        return text[max(0, found.start() - 500) : found.start() + 4000]

    async def _read(self) -> bool:
        assert self.proc.stdout is not None
        chunk = await self.proc.stdout.read(4096)
        self.output += self._decoder.decode(chunk, final=not chunk)
        return bool(chunk)


def child_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNFORGE_", "OPENAI_"))}
    env.update(
        RUNFORGE_DATA_DIR=str(data_dir),
        RUNFORGE_PORT="0",
        RUNFORGE_SIM_PACE_MS="1",
        PYTHONUNBUFFERED="1",
    )
    return env


Spawn = Callable[..., Awaitable[Child]]


@contextlib.asynccontextmanager
async def cli_children(log_dir: Path) -> AsyncIterator[Spawn]:
    """``start(*args, data_dir=..., env={...})`` runs `python -m app *args`; children left running are killed."""
    children: list[Child] = []
    with contextlib.ExitStack() as logs:

        async def start(*args: str, data_dir: Path, env: dict[str, str] | None = None) -> Child:
            log_path = log_dir / f"child-{len(children)}.log"
            log = logs.enter_context(log_path.open("wb"))
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "app",
                *args,
                cwd=REPO,
                env={**child_env(data_dir), **(env or {})},
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
            child = Child(proc, log_path)
            children.append(child)
            return child

        try:
            yield start
        finally:
            for child in children:
                if child.proc.returncode is None:
                    child.proc.kill()
                await child.proc.wait()
        # Only after a passing test: an expected condition (a stop during a database call, a
        # stalled reader, a shutdown) is one log line, never a traceback.
        tracebacks = [(child.log.name, found) for child in children if (found := child.unexpected_traceback())]
        assert not tracebacks, "a server printed a traceback:\n" + "\n".join(f"{n}:\n{t}" for n, t in tracebacks)


@dataclass
class ServeProcess:
    child: Child
    url: str
    token: str | None

    def client(self, token: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {token or self.token}"}
        return httpx.AsyncClient(base_url=self.url, headers=headers, timeout=30.0)


async def start_serve(spawn: Spawn, data_dir: Path, env: dict[str, str] | None = None) -> ServeProcess:
    extra = {} if env is None else {"env": env}  # some callers wrap spawn without an env
    child = await spawn("serve", "--port", "0", "--no-access-log", data_dir=data_dir, **extra)
    url = (await child.expect(r"Runforge listening on (http://127\.0\.0\.1:\d+)\n"))[1]
    login = await child.expect(r"\nLogin(?: URL: (\S+)|: .*)\n")
    token = None
    if login[1] is not None:
        token_match = re.fullmatch(re.escape(url) + r"/\?token=([\w-]+)", login[1])
        assert token_match is not None, login[1]
        token = token_match[1]
    # The banner is printed once the port is bound; requests are answered once the app has started.
    async with httpx.AsyncClient(base_url=url, timeout=HANG_TIMEOUT_S) as http, asyncio.timeout(HANG_TIMEOUT_S):
        while True:
            try:
                if (await http.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert child.proc.returncode is None, child.stderr()
            await asyncio.sleep(0.02)
    return ServeProcess(child, url, token)
