"""The tool loop of vue_project runs: stream a step from the LLM, run the tools it asked for, repeat.

Stop checkpoints: before every LLM request and before every tool (``gate.check()``), plus
task cancellation at every ``await``. Side effects themselves commit through the stop gate.
An ``after_step`` stop that arrives during a tool call is honoured right after that call.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from app.agent.prompts import system_prompt
from app.agent.steps import PendingToolCall, StepOutput, ToolCall
from app.control.events import ToolCallFinished, ToolCallStarted
from app.control.run import Run
from app.control.stats import ToolCallRecord
from app.llm.chunks import ToolCallDelta
from app.llm.stream import ChatStream
from app.tools import TOOL_SPECS, execute_tool

# (role, content) of completed turns, oldest first; role is "user" or "ai".
History = Sequence[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class ToolLoop:
    llm: ChatStream
    max_steps: int
    # Fault injection (RUNFORGE_TOOL_DELAY_MS): every tool call takes at least this long.
    tool_delay_s: float = 0.0


async def run_tool_loop(run: Run, loop: ToolLoop, messages: list[dict[str, Any]]) -> str:
    """Steps until the model stops calling tools or calls ``exit``; returns the finish reason."""
    for step in range(1, loop.max_steps + 1):
        run.gate.check()  # no follow-up request after a stop
        run.stats.steps = step
        output = await stream_step(run, loop.llm, messages, TOOL_SPECS)
        messages.append(output.as_message())
        if not output.tool_calls:
            return "stop"
        if await execute_calls(run, output.tool_calls, messages, loop.tool_delay_s):
            return "exit"
    return "max_steps"


def initial_messages(code_gen_type: str, history: History, message: str) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt(code_gen_type)}]
    for role, content in history:
        messages.append({"role": "assistant" if role == "ai" else "user", "content": content})
    messages.append({"role": "user", "content": message})
    return messages


async def stream_step(
    run: Run,
    llm: ChatStream,
    messages: list[dict[str, Any]],
    tools: Sequence[dict[str, Any]] = (),
    on_text: Callable[[str], None] | None = None,
) -> StepOutput:
    text = io.StringIO()  # not a list of deltas: 2M tokens would be 2M small str objects (~120 MB)
    pending: dict[int, PendingToolCall] = {}
    deltas = 0
    saw_usage = False
    try:
        async with llm.stream_chat(messages, tools, run.id) as stream:
            async for chunk in stream:
                if chunk.usage is not None:
                    saw_usage = True
                    run.stats.prompt_tokens += chunk.usage.prompt_tokens
                    run.stats.completion_tokens += chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        deltas += 1
                        text.write(choice.delta.content)
                        run.emit_text(choice.delta.content)
                        if on_text is not None:
                            on_text(choice.delta.content)
                    if choice.delta.tool_calls:
                        deltas += 1
                        _accumulate(pending, choice.delta.tool_calls)
                        run.stats.partial_tool_calls = len(pending)
    finally:
        run.note_upstream_closed()  # the `async with` has closed it, on a stop too
        if not saw_usage:
            # Closed early, or a provider without usage: count streamed deltas as tokens.
            run.stats.completion_tokens += deltas
            run.stats.usage_estimated = True
    run.stats.partial_tool_calls = 0
    calls = tuple(call.finish(index) for index, call in sorted(pending.items()))
    return StepOutput(text.getvalue(), calls)


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


async def execute_calls(
    run: Run, calls: Sequence[ToolCall], messages: list[dict[str, Any]], delay_s: float = 0.0
) -> bool:
    """Run the calls in order; returns True when the model called ``exit``."""
    records = [ToolCallRecord(call.call_id, call.name) for call in calls]
    run.stats.tool_calls.extend(records)
    for call, record in zip(calls, records, strict=True):
        run.gate.check()  # a stopped run starts no tool
        run.emit(ToolCallStarted(call.call_id, call.name, call.display_args()))
        run.tool_in_progress = True
        # A write commits in a worker thread; the gate marks the call executed at that instant.
        run.gate.on_commit = record.mark_executed
        try:
            if delay_s:
                await asyncio.sleep(delay_s)
            result = await execute_tool(call.name, call.arguments, run.workspace, run.gate)
        finally:
            run.gate.on_commit = None
            run.tool_in_progress = False
        record.mark_executed()
        run.emit(ToolCallFinished(call.call_id, call.name, result.ok, result.summary))
        messages.append({"role": "tool", "tool_call_id": call.call_id, "content": result.output})
        run.honour_deferred_stop()  # after_step: the call in progress is done, stop here
        if result.is_exit:
            return True
    return False
