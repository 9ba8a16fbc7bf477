"""A chat-completions request as the simulator reads it: the body, the run's headers, and the
scenario it asks for.

Behaviour is chosen per request: a ``[sim:NAME key=value ...]`` directive in the latest user
message that has one, else a ``sim-NAME`` model name, else what Runforge's prompt asks for, else
the configured default. A multi-step scenario derives its position from the request's messages,
so the server is stateless and deterministic across requests.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from app.llm.prompt_format import OUTPUT_FORMAT_LINE, TEMPLATE_MARKER
from app.simulator.config import RUN_ID_HEADER, SENT_AT_HEADER, SimulatorConfig
from app.simulator.scenario_types import Params, Scenario
from app.simulator.scenarios import SCENARIOS


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
        tool_names=tool_names(data.get("tools")),
        run_id=headers.get(RUN_ID_HEADER),
        sent_at=_float_or_none(headers.get(SENT_AT_HEADER)),
        fields=sorted(data),
    )


def _float_or_none(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def tool_names(tools: object) -> list[str]:
    if not isinstance(tools, list):
        return []
    functions = (t.get("function") for t in tools if isinstance(t, dict))
    return [str(f.get("name")) for f in functions if isinstance(f, dict) and f.get("name")]


def last_user_text(messages: Sequence[Mapping[str, Any]]) -> str:
    last_user = next((m for m in reversed(messages) if m.get("role") == "user"), None)
    return _message_text(last_user) if last_user else ""


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
    if TEMPLATE_MARKER in last_user_text(request.messages):
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


_OUTPUT_FORMAT = re.compile(rf"^{re.escape(OUTPUT_FORMAT_LINE)} (\w+)", re.MULTILINE)


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
