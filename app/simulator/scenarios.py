"""The scenarios, by name: what the simulated model answers at each step of a conversation.

Site-building ones (``codegen``, ``page``, ``vue_app``, ``template_edit``) answer Runforge's own
prompts; the others stage what run control must survive: long streams to stop, slow headers or
first tokens, broken streams, HTTP errors, bad or huge tool calls, escaping paths, endless loops.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from types import MappingProxyType

from app.simulator.scenario_types import Fault, Reply, Scenario, ToolCall, Turn
from app.simulator.site_files import (
    INDEX_HTML,
    LEAK_JS,
    LEAK_PACKAGE,
    SCRIPT_JS,
    STYLE_CSS,
    VUE_FILES,
    WAITING_VITE_CONFIG,
    inline_page,
)

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
        return Reply(plan, (_write("index.html", INDEX_HTML),))
    if turn.step == 1:
        text = "The page is in place. Now the styling and the counter logic."
        return Reply(text, (_write("style.css", STYLE_CSS), _write("script.js", SCRIPT_JS)))
    return Reply(
        "The site is ready: index.html links style.css and script.js, and the buttons "
        "increment and reset the counter. Open index.html in a browser to try it."
    )


def _page(turn: Turn) -> Reply:
    """An html / multi_file answer: the files as fenced blocks, no tools."""
    intro = "Here is a small click-counter site."
    outro = "Open index.html to try it: the buttons increment and reset the counter."
    if turn.output_format == "html":
        return Reply(f"{intro} Everything is in one file.\n\n```html\n{inline_page()}```\n\n{outro}\n")
    blocks = f"```html\n{INDEX_HTML}```\n\n```css\n{STYLE_CSS}```\n\n```js\n{SCRIPT_JS}```"
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
        calls = tuple(_write(path, VUE_FILES[path]) for path in ("package.json", "vite.config.js", "index.html"))
        return Reply("I'll scaffold a small Vite + Vue 3 project: the manifest and entry page first.", calls)
    if turn.step == 1:
        calls = tuple(_write(path, VUE_FILES[path]) for path in ("src/main.js", "src/App.vue"))
        return Reply("Now the Vue entry point and the counter component.", calls)
    if turn.step == 2:
        return Reply("", (ToolCall("exit", "{}"),))
    return Reply("The Vue project is ready.")


def _list(path: str) -> ToolCall:
    return ToolCall("list_dir", json.dumps({"path": path}))


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


def _build_escape(turn: Turn) -> Reply:
    if turn.step == 0:
        return Reply("Setting up the build.", (_write("package.json", LEAK_PACKAGE), _write("leak.js", LEAK_JS)))
    if turn.step == 1:
        return Reply("", (ToolCall("exit", "{}"),))
    return Reply("The site is ready.")


def _slow_build(turn: Turn) -> Reply:
    if turn.step == 0:
        return Reply("Tuning the build configuration.", (_write("vite.config.js", WAITING_VITE_CONFIG),))
    if turn.step == 1:
        return Reply("", (ToolCall("exit", "{}"),))
    return Reply("The build is configured.")


def _loop(turn: Turn) -> Reply:
    return Reply("Let me look at the directory again.", (ToolCall("list_dir", '{"path": "."}'),))


def _exit_tool(turn: Turn) -> Reply:
    if turn.step == 0:
        return Reply("Writing the page.", (_write("index.html", INDEX_HTML),))
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
