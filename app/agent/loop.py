"""The agent loop: stream a step from the LLM, run the tools it asked for, repeat.

Stop checkpoints: before every LLM request and before every tool (``gate.check()``), plus
task cancellation at every ``await``. Side effects themselves commit through the stop gate.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.agent.prompts import system_prompt
from app.agent.steps import PendingToolCall, StepOutput, ToolCall
from app.control.events import ToolCallFinished, ToolCallStarted
from app.control.outcomes import Completion
from app.control.run import Run, ToolCallRecord
from app.llm.chunks import ToolCallDelta
from app.llm.client import LLMClient
from app.tools import TOOL_SPECS, execute_tool

# (role, content) of completed turns, oldest first; role is "user" or "ai".
History = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class AgentDeps:
    llm: LLMClient
    load_history: Callable[[str], Awaitable[History]]
    max_steps: int


async def run_agent(run: Run, deps: AgentDeps) -> Completion:
    # The model may list the workspace before anything was written to it.
    await asyncio.to_thread(run.workspace.mkdir, parents=True, exist_ok=True)
    messages = initial_messages(await deps.load_history(run.app_id), run.message)
    for step in range(1, deps.max_steps + 1):
        run.gate.check()  # no follow-up request after a stop
        run.stats.steps = step
        output = await stream_step(run, deps.llm, messages)
        messages.append(output.as_message())
        if not output.tool_calls:
            return Completion("stop")
        if await execute_calls(run, output.tool_calls, messages):
            return Completion("exit")
    return Completion("max_steps")


def initial_messages(history: History, message: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt()}]
    for role, content in history:
        messages.append({"role": "assistant" if role == "ai" else "user", "content": content})
    messages.append({"role": "user", "content": message})
    return messages


async def stream_step(run: Run, llm: LLMClient, messages: list[dict[str, Any]]) -> StepOutput:
    text: list[str] = []
    pending: dict[int, PendingToolCall] = {}
    deltas = 0
    saw_usage = False
    try:
        async with llm.stream_chat(messages, TOOL_SPECS, run.id) as stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    saw_usage = True
                    run.stats.prompt_tokens += chunk.usage.prompt_tokens
                    run.stats.completion_tokens += chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        deltas += 1
                        text.append(choice.delta.content)
                        run.emit_text(choice.delta.content)
                    if choice.delta.tool_calls:
                        deltas += 1
                        _accumulate(pending, choice.delta.tool_calls)
                        run.stats.partial_tool_calls = len(pending)
    finally:
        if not saw_usage:
            # Closed early, or a provider without usage: count streamed deltas as tokens.
            run.stats.completion_tokens += deltas
            run.stats.usage_estimated = True
    run.stats.partial_tool_calls = 0
    calls = tuple(call.finish(index) for index, call in sorted(pending.items()))
    return StepOutput("".join(text), calls)


def _accumulate(pending: dict[int, PendingToolCall], deltas: list[ToolCallDelta]) -> None:
    for delta in deltas:
        call = pending.setdefault(delta.index, PendingToolCall())
        if delta.id:
            call.call_id = delta.id
        if delta.function is not None:
            if delta.function.name:
                call.name += delta.function.name
            if delta.function.arguments:
                call.arguments.append(delta.function.arguments)


async def execute_calls(run: Run, calls: Sequence[ToolCall], messages: list[dict[str, Any]]) -> bool:
    """Run the calls in order; returns True when the model called ``exit``."""
    records = [ToolCallRecord(call.call_id, call.name) for call in calls]
    run.stats.tool_calls.extend(records)
    for call, record in zip(calls, records, strict=True):
        run.gate.check()  # a stopped run starts no tool
        run.emit(ToolCallStarted(call.call_id, call.name, call.display_args()))
        # A write commits in a worker thread; the gate marks the call executed at that instant.
        run.gate.on_commit = record.mark_executed
        try:
            result = await execute_tool(call.name, call.arguments, run.workspace, run.gate)
        finally:
            run.gate.on_commit = None
        record.mark_executed()
        run.emit(ToolCallFinished(call.call_id, call.name, result.ok, result.summary))
        messages.append({"role": "tool", "tool_call_id": call.call_id, "content": result.output})
        if result.is_exit:
            return True
    return False
