"""The agent's tool loop against the in-process model double: no sockets, no server.

The same scenarios as the wire tests (app/simulator), as Chunk objects: the loop's own decisions
(steps, tool calls, results fed back, where a stop lands) are checked here; what the network
does with a stop is the wire tests' (tests/test_stop.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from app.agent.loop import ToolLoop, initial_messages, run_tool_loop
from app.control.cancel import StopReason
from app.control.outcomes import Completion
from app.control.request import RunRequest
from app.control.run import Run, RunStatus
from app.simulator.in_process import FunctionModel, scenario_model
from app.wire.sse import encode_event

TEXT_CHUNKS = 50


class Recorded:
    """A RunRecorder that keeps what it was told."""

    def __init__(self) -> None:
        self.outcomes: list[str] = []

    async def record_completed(self, run: Run) -> None:
        self.outcomes.append("completed")

    async def record_interrupted(self, run: Run) -> None:
        self.outcomes.append("interrupted")

    async def record_failed(self, run: Run) -> None:
        self.outcomes.append("failed")


def names(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def new_run(workspace: Path, run_id: str = "unit-1") -> Run:
    return Run(RunRequest(run_id, "app-1", "u1", "m", workspace), encode=encode_event)


def start(run: Run, model: FunctionModel, prompt: str, finish: list[str]) -> Recorded:
    async def job(run: Run) -> Completion:
        messages = initial_messages("vue_project", [], prompt)
        finish.append(await run_tool_loop(run, ToolLoop(model, max_steps=10), messages))
        return Completion(finish[-1])

    recorded = Recorded()
    run.start(job, recorded)
    return recorded


async def test_the_loop_runs_each_tool_and_feeds_its_result_back(tmp_path: Path) -> None:
    model, finish = scenario_model(), []
    run = new_run(tmp_path)
    recorded = start(run, model, "a site [sim:tools_midstream files=3]", finish)
    await run.wait_finished()
    assert (finish, recorded.outcomes, run.status) == (["stop"], ["completed"], RunStatus.COMPLETED)
    assert await asyncio.to_thread(names, tmp_path) == ["file_1.txt", "file_2.txt", "file_3.txt"]
    assert len(model.calls) == 4  # three steps with a tool call each, then the answer without one
    results = [[m for m in call.messages if m["role"] == "tool"] for call in model.calls]
    assert [len(r) for r in results] == [0, 1, 2, 3]  # each step sees every earlier tool result
    assert all(call.closed for call in model.calls)
    assert run.stats.executed == 3


async def test_a_stop_mid_answer_closes_the_stream_and_nothing_follows(tmp_path: Path) -> None:
    def answer(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        write = '{"path": "late.txt", "content": "x"}'
        call = {"index": 0, "id": "c1", "type": "function", "function": {"name": "write_file", "arguments": write}}
        return [*({"content": f"{n} "} for n in range(TEXT_CHUNKS)), {"tool_calls": [call]}]

    model, finish = FunctionModel(answer), []
    run = new_run(tmp_path)
    recorded = start(run, model, "anything", finish)
    async for batch in run.log.follow():  # until the first text has reached the run's log
        if any(event.kind == "message" for event in batch):
            break
    run.cancel(StopReason.USER_STOP)
    await run.wait_finished()
    assert (recorded.outcomes, run.status, finish) == (["interrupted"], RunStatus.INTERRUPTED, [])
    [call] = model.calls  # no follow-up request
    assert call.closed
    assert call.chunks_sent < TEXT_CHUNKS  # closed mid-text: the tool call never came
    assert await asyncio.to_thread(names, tmp_path) == []  # and no tool ran
