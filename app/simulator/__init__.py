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

The modules, from the wire inwards: ``server`` (uvicorn, the thread, the socket), ``asgi``
(routes, one chat request end to end), ``answers`` (stream, whole body or HTTP error),
``exchange`` (the recorded send side, the disconnect watcher), ``encoding`` (OpenAI's JSON),
``requests`` (parsing, directives, picking the scenario), ``scenarios`` with ``scenario_types``
and ``site_files`` (what is answered), ``recorder`` and ``config``; ``__main__`` runs it alone.
It imports nothing of the product above it: what it shares with the agent's prompts is in
app/llm/prompt_format.py.
"""

from __future__ import annotations

from app.simulator.asgi import SimulatorApp, create_simulator_app
from app.simulator.config import RUN_ID_HEADER, SENT_AT_HEADER, SimulatorConfig
from app.simulator.encoding import deltas, generated_tokens
from app.simulator.recorder import DEFAULT_FULL_PROMPTS, DEFAULT_MAX_RECORDS, Recorder, RequestRecord
from app.simulator.requests import (
    ChatRequest,
    RequestError,
    conversation_step,
    output_format,
    parse_chat_request,
    resolve_scenario,
)
from app.simulator.scenario_types import Fault, Params, Reply, Scenario, ToolCall, Turn
from app.simulator.scenarios import SCENARIOS
from app.simulator.server import SimulatorServer

__all__ = [
    "DEFAULT_FULL_PROMPTS",
    "DEFAULT_MAX_RECORDS",
    "RUN_ID_HEADER",
    "SCENARIOS",
    "SENT_AT_HEADER",
    "ChatRequest",
    "Fault",
    "Params",
    "Recorder",
    "Reply",
    "RequestError",
    "RequestRecord",
    "Scenario",
    "SimulatorApp",
    "SimulatorConfig",
    "SimulatorServer",
    "ToolCall",
    "Turn",
    "conversation_step",
    "create_simulator_app",
    "deltas",
    "generated_tokens",
    "output_format",
    "parse_chat_request",
    "resolve_scenario",
]
