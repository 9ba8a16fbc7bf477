"""`python -m app ...` subprocesses with an environment of the test's choosing (database, broker, workers).

The same children as tests/test_processes.py's `spawn` (Child, child_env), plus `env` overrides.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

from tests.test_processes import REPO, Child, child_env

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
