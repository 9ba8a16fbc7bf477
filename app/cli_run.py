"""`runforge run`: stream a run in the terminal. Ctrl-C stops it through POST /app/chat/stop."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import uuid
from dataclasses import dataclass, field
from typing import Any, TextIO

import httpx
from httpx_sse import aconnect_sse

from app.settings import Settings

EXIT_INTERRUPTED = 130
TERMINAL = ("done", "interrupted", "failed")


@dataclass
class Progress:
    """What the live display shows: steps, tool calls and the files written so far."""

    out: TextIO
    tool_calls: int = 0
    files: list[str] = field(default_factory=list)
    at_line_start: bool = True

    def text(self, chunk: str) -> None:
        self.out.write(chunk)
        self.out.flush()
        self.at_line_start = chunk.endswith("\n")

    def line(self, text: str) -> None:
        if not self.at_line_start:
            self.out.write("\n")
        self.out.write(text + "\n")
        self.out.flush()
        self.at_line_start = True

    def tool_result(self, data: dict[str, Any]) -> None:
        self.tool_calls += 1
        mark = "ok" if data.get("ok") else "error"
        if data.get("ok") and data.get("name") in ("write_file", "modify_file"):
            self.files.append(str(data.get("summary", "")))
        self.line(f"  [{self.tool_calls} tool calls, {len(self.files)} files] {mark}: {data.get('summary', '')}")


def run_in_terminal(settings: Settings, args: argparse.Namespace) -> int:
    server = args.server or f"http://{settings.host}:{settings.port}"
    token = args.token or os.environ.get("RUNFORGE_TOKEN") or _local_token(settings)
    if not token:
        print(
            "runforge: no token: pass --token, set RUNFORGE_TOKEN, or run `runforge serve` once",
            file=sys.stderr,
        )
        return 2
    problem = _prompt_problem(args.prompt, settings.max_message_chars)
    if problem:  # before anything is created: a refused prompt must not leave an empty app behind
        print(f"runforge: {problem}", file=sys.stderr)
        return 2
    return asyncio.run(_run(server, token, args.app_id, args.prompt, getattr(args, "code_gen_type", None)))


def _prompt_problem(prompt: str, max_chars: int) -> str | None:
    if not prompt.strip():
        return 'the prompt is empty: say what to build, e.g. runforge run "build me a click counter"'
    if len(prompt) > max_chars:
        limit = f"{max_chars:,} (RUNFORGE_MAX_MESSAGE_CHARS)"
        return f"the prompt has {len(prompt):,} characters; the server takes at most {limit}"
    return None


def _local_token(settings: Settings) -> str | None:
    try:
        return settings.local_token_file.read_text().strip() or None
    except OSError:
        return None


async def _run(server: str, token: str, app_id: str | None, prompt: str, code_gen_type: str | None = None) -> int:
    headers = {"Authorization": f"Bearer {token}"}
    timeout = httpx.Timeout(10.0, read=None)
    async with httpx.AsyncClient(base_url=server, headers=headers, timeout=timeout) as client:
        try:
            app_id = app_id or await _create_app(client, prompt, code_gen_type)
        except httpx.HTTPStatusError as exc:
            print(f"runforge: the server refused: {_server_said(exc.response)}", file=sys.stderr)
            return 1
        except httpx.HTTPError as exc:
            print(f"runforge: cannot reach {server}: {exc}", file=sys.stderr)
            return 1
        run_id = uuid.uuid4().hex
        stop_requested = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop_requested.set)
        stopper = asyncio.create_task(_stop_when_asked(client, run_id, stop_requested))
        try:
            return await _stream(client, app_id, run_id, prompt, Progress(sys.stdout))
        finally:
            loop.remove_signal_handler(signal.SIGINT)
            stopper.cancel()


async def _create_app(client: httpx.AsyncClient, prompt: str, code_gen_type: str | None) -> str:
    body = {"initPrompt": prompt} | ({"codeGenType": code_gen_type} if code_gen_type else {})
    response = await client.post("/apps", json=body)
    response.raise_for_status()
    app = response.json()
    app_id: str = app["id"]
    print(f"created app {app_id} ({app['codeGenType']}, rule {app['codeGenTypeRule']})")
    return app_id


async def _stop_when_asked(client: httpx.AsyncClient, run_id: str, asked: asyncio.Event) -> None:
    await asked.wait()
    print("\nstopping…", file=sys.stderr)
    await client.post("/app/chat/stop", json={"runId": run_id})


async def _stream(client: httpx.AsyncClient, app_id: str, run_id: str, prompt: str, progress: Progress) -> int:
    body = {"appId": app_id, "message": prompt, "runId": run_id}
    async with aconnect_sse(client, "POST", "/app/chat/gen/code", json=body) as source:
        if source.response.status_code != 200:
            await source.response.aread()
            print(f"runforge: the server refused: {_server_said(source.response)}", file=sys.stderr)
            return 1
        async for sse in source.aiter_sse():
            if not sse.data:
                continue  # not an event of ours (e.g. a blank frame from a proxy)
            data = json.loads(sse.data)
            kind = sse.event or "message"
            if kind == "message":
                progress.text(data["d"])
            elif kind == "run":
                progress.line(f"run {run_id} on app {app_id}")
            elif kind == "tool_call":
                progress.line(f"  → {data['name']} {data['args'].get('path', '')}".rstrip())
            elif kind == "tool_result":
                progress.tool_result(data)
            elif kind in ("template", "build"):
                progress.line(_describe(kind, data))
            elif kind in TERMINAL:
                return _finish(progress, kind, data, str(client.base_url))
    progress.line("the stream ended without a final event")
    return 1


def _server_said(response: httpx.Response) -> str:
    """The server's error code and message (``{"status", "error", "message"}``), else its status line."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return f"{body['error']}: {body.get('message', '')} (HTTP {response.status_code})"
    return f"HTTP {response.status_code} {response.reason_phrase}"


def _finish(progress: Progress, kind: str, data: dict[str, Any], server: str) -> int:
    if kind == "done":
        files = len(progress.files) + len(data.get("files") or [])
        progress.line(f"done: {data['steps']} steps, {progress.tool_calls} tool calls, {files} files")
        if data.get("previewUrl"):
            progress.line(f"preview: {server.rstrip('/')}{data['previewUrl']}")
        return 0
    if kind == "interrupted":
        progress.line(f"interrupted ({data['reason']})")
        return EXIT_INTERRUPTED
    progress.line(f"failed: {data['error']['code']}: {data['error']['message']}")
    return 1


def _describe(kind: str, data: dict[str, Any]) -> str:
    if kind == "template":
        if data.get("name") is None:
            return "template: none"
        copied = "copied" if data.get("copied") else "not copied (workspace not empty)"
        return f"template: {data['name']} ({data['method']} {data['score']:.2f}), {copied}"
    if data.get("status") == "output":
        return f"  | {data.get('line', '')}"
    return f"build: {data.get('step')} {data.get('status')} {data.get('line', '')}".rstrip()
