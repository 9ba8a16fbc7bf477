"""The README's examples, run as written against a live `runforge serve` (real CLI, curl, openai).

Each block marked ``<!-- README example: NAME -->`` is taken from README.md and run from a
directory laid out as after `make run` (``runs/`` the data directory, ``.venv`` this one), with
one change: the port, since the test's server listens on a free port instead of 8000.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.cli_kit import REPO, ServeProcess, cli_children, start_serve

README = REPO / "README.md"
EXAMPLE = re.compile(r"<!-- README example: (?P<name>[\w-]+)[^>]*-->\n```(?P<lang>\w+)\n(?P<code>.*?)\n```", re.DOTALL)
RUN_TIMEOUT_S = 240.0  # the Vue preset's first install may fetch from the registry


def examples() -> dict[str, tuple[str, str]]:
    found = {m["name"]: (m["lang"], m["code"]) for m in EXAMPLE.finditer(README.read_text(encoding="utf-8"))}
    assert set(found) == {"cli", "curl", "openai"}, set(found)
    return found


@pytest.fixture
async def site(tmp_path: Path) -> AsyncIterator[tuple[ServeProcess, Path]]:
    """A server whose data directory is ``runs/`` of a fresh directory that also has ``.venv``."""
    home = tmp_path / "checkout"
    home.mkdir()
    (home / ".venv").symlink_to(REPO / ".venv")
    async with cli_children(tmp_path) as spawn:
        yield await start_serve(spawn, home / "runs"), home


async def run_example(name: str, site: tuple[ServeProcess, Path]) -> str:
    serve, home = site
    lang, code = examples()[name]
    port = serve.url.rpartition(":")[2]
    code = code.replace(":8000", f":{port}")
    argv = ["bash", "-euo", "pipefail", "-c", code] if lang == "sh" else [sys.executable, "-c", code]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNFORGE_", "OPENAI_"))}
    env["RUNFORGE_PORT"] = port  # where `runforge run` finds the server (8000 in the README)
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=home,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its background curl too: killed with the group, whatever happens
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT_S):
            output, _ = await proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    text = output.decode()
    assert proc.returncode == 0, text
    return text


@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
async def test_the_cli_example(site: tuple[ServeProcess, Path]) -> None:
    output = await run_example("cli", site)
    assert output.count("\ndone: ") == 2, output
    port = site[0].url.rpartition(":")[2]
    previews = re.findall(rf"^preview: http://127\.0\.0\.1:{port}/apps/\w+/preview/$", output, re.MULTILINE)
    assert len(previews) == 2, output  # the multi_file site, and the portfolio preset built by npm
    assert "template: portfolio" in output
    assert re.search(r"^portfolio\b", output, re.MULTILINE), output  # templates list


async def test_the_curl_example_stops_its_run(site: tuple[ServeProcess, Path]) -> None:
    output = await run_example("curl", site)
    assert re.search(r'"status":\s*"stopping"', output), output  # the stop found the run
    assert "event: interrupted" in output, output
    assert '"reason":"user_stop"' in output.replace(" ", ""), output


async def test_the_openai_example_prints_the_chunks_and_how_it_ended(site: tuple[ServeProcess, Path]) -> None:
    output = await run_example("openai", site)
    last = output.rstrip().splitlines()[-1]
    match = re.fullmatch(r"\[(\d+) chunks, finish_reason=stop\]", last)
    assert match is not None, output
    assert 11 <= int(match[1]) < 200, output  # interrupted after ten, long before the story's end
    assert len(output) > len(last) + 20, output  # the story's first words were printed
