"""The simulator's scenarios without a socket: a ``ChatStream`` for unit tests of the agent.

Wire tests use the loopback server (app/simulator/server.py); unit tests of the agent loop and
of code generation use this instead, as pydantic-ai's ``FunctionModel``: the same scenarios and
deltas, as ``Chunk`` objects, yielded in-process. A model of one's own is a function from the
conversation to deltas: ``FunctionModel(answer)``. Faults (HTTP errors, malformed chunks, slow
headers) and pacing are the wire's: they need the server.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

from app.llm.chunks import Chunk
from app.simulator.config import SimulatorConfig
from app.simulator.encoding import deltas
from app.simulator.requests import ChatRequest, conversation_step, output_format, resolve_scenario, tool_names
from app.simulator.scenario_types import Turn

# (messages, tools) -> the answer's deltas, OpenAI's `choices[0].delta` objects, in order.
Answer = Callable[[list[dict[str, Any]], list[dict[str, Any]]], Iterable[dict[str, Any]]]


@dataclass
class ModelCall:
    """One completion asked of the model: what it was sent, and whether its stream was closed."""

    run_id: str
    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    chunks_sent: int = 0
    closed: bool = field(default=False)


class FunctionModel:
    def __init__(self, answer: Answer) -> None:
        self._answer = answer
        self.calls: list[ModelCall] = []

    @contextlib.asynccontextmanager
    async def stream_chat(
        self, messages: Sequence[dict[str, Any]], tools: Sequence[dict[str, Any]], run_id: str
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        call = ModelCall(run_id, [dict(m) for m in messages], list(tools))
        self.calls.append(call)
        try:
            async with contextlib.aclosing(_chunks(call, self._answer(call.messages, call.tools))) as chunks:
                yield chunks
        finally:
            call.closed = True


async def _chunks(call: ModelCall, answer: Iterable[dict[str, Any]]) -> AsyncGenerator[Chunk, None]:
    for delta in answer:
        await asyncio.sleep(0)  # a stop can land between chunks, as on the wire
        call.chunks_sent += 1
        yield msgspec.convert({"choices": [{"index": 0, "delta": delta}]}, Chunk)


def scenario_model(config: SimulatorConfig | None = None) -> FunctionModel:
    """The simulator's scenarios in-process: ``[sim:NAME ...]`` directives choose them, as on the wire."""
    config = config or SimulatorConfig()

    def answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        request = ChatRequest(config.model, True, False, messages, tool_names(tools), run_id=None)
        scenario, params = resolve_scenario(request, config)
        step = conversation_step(messages)
        return deltas(scenario.reply(Turn(step, params, output_format(messages))), step)

    return FunctionModel(answer)
