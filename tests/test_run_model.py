"""A model-based test of the run lifecycle against a live server and the simulator.

Hypothesis drives random sequences of what clients do (start a code run or a /v1 request, stop
in each mode, stop before the start, leave with each onDisconnect, rejoin from a random event,
supersede, revert, restart the worker as SIGTERM does) and after every step checks what must
always hold:

* every stream read to its end has exactly one terminal event, and it is the last;
* a run whose stop was accepted (202, or 200 interrupted) never completes, and a run started
  after its pending stop does nothing: no text, no upstream request;
* no upstream request was sent after the run's stop was accepted (the server stamps each request
  with its send time; the run records when its stop was accepted);
* a rejoin replays exactly the events the run's own stream had after the rejoin's id; after a
  restart, it answers the terminal event the stream saw;
* a superseded run completes or is interrupted as superseded, and two runs of one app never
  send upstream requests at the same time (the old one's last precedes the new one's first);
* the history holds exactly the completed code runs' turns (nothing truncated is kept);
* once everything has ended, the registry holds no active run.

`make test` runs a bounded search (RUNFORGE_MODEL_EXAMPLES, default 4, of up to 30 steps); the
long run in docs/reliability.md sets RUNFORGE_MODEL_EXAMPLES and RUNFORGE_MODEL_STEPS.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import tempfile
import threading
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from app.settings import LimitSettings, Settings
from app.simulator import RequestRecord
from tests.support import HANG_TIMEOUT_S, TERMINAL, Event, ServerThread, gen_url, open_stream, text_of

T = TypeVar("T")
EXAMPLES = int(os.environ.get("RUNFORGE_MODEL_EXAMPLES", "4"))
STEPS = int(os.environ.get("RUNFORGE_MODEL_STEPS", "30"))
APPS = 3
PROMPTS = {  # a vue_project app offers the tools; builds are off in tests
    "text": "an essay [sim:long_text pace=4 tokens=150]",
    "tools": "a site [sim:tools_midstream files=3 pace=4]",
    "quick": "a page [sim:long_text pace=1 tokens=5]",
}
STOP_MODES = ("immediate", "rollback", "after_step")
MAX_RESTARTS = 2  # per example: a restart takes ~0.3 s and ends every run in flight


@dataclass
class Stream:
    """One client's view of a run: what its stream delivered, and what was done to it."""

    run_id: str
    kind: str  # code | v1
    app: str | None
    events: list[Event] = field(default_factory=list)
    v1_body: bytes = b""
    ended: bool = False  # read to the server's end of the stream
    left: bool = False  # the client closed it before the end
    stop_accepted: bool = False
    stopped_before_start: bool = False
    superseded: bool = False
    cut: bool = False  # its worker restarted while its client was still reading or starting it
    worker: int = 0  # which of the example's servers it was started on
    task: asyncio.Task[None] | None = None


class Background:
    """An event loop in a thread: the machine's rules are synchronous, the clients are not."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="model-clients", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(HANG_TIMEOUT_S)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(HANG_TIMEOUT_S)
        self.loop.close()


def model_settings(base: Settings) -> Settings:
    """A data directory of its own for each example (run ids repeat across examples)."""
    unlimited = LimitSettings(max_active_runs_per_user=0, gen_per_minute=0, stops_per_minute=0)
    data_dir = Path(tempfile.mkdtemp(prefix="example-", dir=base.data_dir.parent))
    return base.with_overrides(limits=unlimited, finished_run_ttl_s=3600.0, data_dir=data_dir)


class RunLifecycle(RuleBasedStateMachine):
    settings: Settings  # set by the test before the machine runs
    steps_taken = 0  # over all examples, for the long run's report

    def __init__(self) -> None:
        super().__init__()
        self.bg = Background()
        self.example_settings = model_settings(self.settings)
        self.server = ServerThread(self.example_settings).start()
        self.retired: list[ServerThread] = []  # servers restarted away: their simulators' records
        # Examples share a PostgreSQL database (under `make test-pg`): names and ids are unique.
        self.example = uuid.uuid4().hex[:8]
        self.token = self.server.add_user(f"model-{self.example}")
        self.http: httpx.AsyncClient = self.bg.run(self._client())
        self.apps: list[str] = [self.bg.run(self._new_app(i)) for i in range(APPS)]
        self.streams: dict[str, Stream] = {}
        self.ids = (f"m{self.example}-{n}" for n in itertools.count())

    async def _client(self) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {self.token}"}
        return httpx.AsyncClient(base_url=self.server.url, headers=headers, timeout=HANG_TIMEOUT_S)

    async def _new_app(self, index: int) -> str:
        response = await self.http.post("/apps", json={"name": f"model {index}", "codeGenType": "vue_project"})
        return str(response.json()["id"])

    # -- rules ---------------------------------------------------------------------------------

    @initialize()
    def nothing_yet(self) -> None:
        assert self.server.services.manager.active_count == 0

    @rule(app=st.integers(0, APPS - 1), prompt=st.sampled_from(list(PROMPTS)), keep=st.booleans())
    def start_code_run(self, app: int, prompt: str, keep: bool) -> None:
        stream = Stream(next(self.ids), "code", self.apps[app])
        on_disconnect = "continue" if keep else "cancel"
        url = gen_url(stream.app or "", PROMPTS[prompt], runId=stream.run_id, onDisconnect=on_disconnect)
        self._start(stream, self._read_code(stream, url))

    @rule(prompt=st.sampled_from(["text", "quick"]))
    def start_v1_request(self, prompt: str) -> None:
        stream = Stream(next(self.ids), "v1", None)
        self._start(stream, self._read_v1(stream, PROMPTS[prompt]))

    @rule(app=st.integers(0, APPS - 1), mode=st.sampled_from(STOP_MODES))
    def stop_before_start(self, app: int, mode: str) -> None:
        stream = Stream(next(self.ids), "code", self.apps[app], stopped_before_start=True)
        answer = self.bg.run(self.http.post("/app/chat/stop", json={"runId": stream.run_id, "mode": mode}))
        assert (answer.status_code, answer.json()["status"]) == (202, "pending"), answer.text
        stream.stop_accepted = True
        url = gen_url(stream.app or "", PROMPTS["text"], runId=stream.run_id)
        self._start(stream, self._read_code(stream, url))

    @precondition(lambda self: self.streams)
    @rule(data=st.data(), mode=st.sampled_from(STOP_MODES), how=st.sampled_from(["chat", "path", "v1"]))
    def stop(self, data: st.DataObject, mode: str, how: str) -> None:
        stream = data.draw(st.sampled_from(list(self.streams.values())))  # live or not: either answer holds
        if how == "v1":
            answer = self.bg.run(self.http.post("/v1/interrupt", json={"requestId": stream.run_id}))
            accepted = answer.status_code == 200 and answer.json()["status"] == "interrupted"
            accepted = accepted and "signal sent" in answer.json()["message"]
        else:
            if how == "chat":
                request = self.http.post("/app/chat/stop", json={"runId": stream.run_id, "mode": mode})
            else:
                request = self.http.post(f"/runs/{stream.run_id}/stop", params={"mode": mode})
            answer = self.bg.run(request)
            body = answer.json()
            accepted = answer.status_code == 202 or body.get("status") == "interrupted"
            assert body.get("status") != "running", body  # never an answer for a run it did not stop
        assert answer.status_code in (200, 202), answer.text
        stream.stop_accepted = stream.stop_accepted or accepted

    @precondition(lambda self: self._code_streams())
    @rule(data=st.data(), prompt=st.sampled_from(list(PROMPTS)))
    def supersede(self, data: st.DataObject, prompt: str) -> None:
        # What is drawn may not depend on timing (hypothesis replays draws): an ended run is
        # drawn too, and then this is only a start on its app.
        old = data.draw(st.sampled_from(self._code_streams()))
        old.superseded = old.task is not None and not old.task.done()
        stream = Stream(next(self.ids), "code", old.app)
        url = gen_url(stream.app or "", PROMPTS[prompt], runId=stream.run_id, onDisconnect="continue")
        self._start(stream, self._read_code(stream, url))

    @precondition(lambda self: len(self.retired) < MAX_RESTARTS)
    @rule()
    def restart_worker(self) -> None:
        for stream in self.streams.values():
            stream.cut = stream.cut or not (stream.task is None or stream.task.done())
        self.server.terminate()
        self.bg.run(self._gather_readers())  # every connection to it is gone: its readers end
        self.bg.run(self.http.aclose())
        self.retired.append(self.server)
        self.server = ServerThread(self.example_settings).start()  # the same data directory
        self.http = self.bg.run(self._client())

    @precondition(lambda self: self.streams)
    @rule(data=st.data())
    def client_leaves(self, data: st.DataObject) -> None:
        stream = data.draw(st.sampled_from(list(self.streams.values())))
        assert stream.task is not None
        if not stream.task.done():
            stream.left = True
            self.bg.run(_cancel(stream.task))

    @precondition(lambda self: self._code_streams())
    @rule(data=st.data(), position=st.integers(0, 400))
    def rejoin(self, data: st.DataObject, position: int) -> None:
        stream = data.draw(st.sampled_from(self._code_streams()))
        seen = list(stream.events)
        after = min(position, seen[-1].seq if seen else 0)
        status, replay = self.bg.run(self._rejoin(stream.run_id, after))
        if status == 404:  # its start has not made the run yet: nothing it delivered, then
            assert not seen, (stream.run_id, seen[:2])
            return
        if status == 204:
            return  # the run has ended and nothing is newer
        assert [e.seq for e in replay] == sorted({e.seq for e in replay}), "a replay's ids are in order"
        assert sum(e.event in TERMINAL for e in replay) <= 1
        if replay and replay[-1].event in TERMINAL and len(replay) > 1:
            assert replay[0].seq == after + 1, (after, [e.seq for e in replay][:3])
        ours = {e.seq: e for e in stream.events}
        for event in replay:  # what both saw is the same event
            if event.seq in ours:
                assert (event.event, event.data) == (ours[event.seq].event, ours[event.seq].data)

    @precondition(lambda self: self._code_streams())
    @rule(data=st.data())
    def revert(self, data: st.DataObject) -> None:
        stream = data.draw(st.sampled_from(self._code_streams()))
        answer = self.bg.run(self.http.post(f"/apps/{stream.app}/revert", json={"runId": stream.run_id}))
        # A run active on the app refuses it; a run that did not complete has no checkpoint.
        assert answer.status_code in (200, 404, 409), answer.text
        if answer.status_code == 200:
            assert runs_status(self, stream.run_id) == "completed"
        else:
            assert answer.json()["error"] in ("run_active", "checkpoint_not_found"), answer.text

    # -- invariants ----------------------------------------------------------------------------

    @invariant()
    def count_the_step(self) -> None:
        RunLifecycle.steps_taken += 1  # invariants run after the initial step and after every rule

    @invariant()
    def each_ended_stream_has_one_terminal_event_last(self) -> None:
        for stream in self.streams.values():
            if stream.kind == "code" and stream.ended:
                terminals = [e for e in stream.events if e.event in TERMINAL]
                assert len(terminals) == 1, stream.events[-3:]
                assert stream.events[-1] is terminals[0], stream.events[-3:]

    @invariant()
    def a_stopped_run_never_completes(self) -> None:
        for stream in self.streams.values():
            if stream.stop_accepted and stream.kind == "code" and stream.ended:
                assert stream.events[-1].event == "interrupted", (stream.run_id, stream.events[-1])
            if stream.stopped_before_start and stream.ended:
                assert not [e for e in stream.events if e.event == "message"], stream.run_id

    def teardown(self) -> None:
        try:
            self.bg.run(self._settle())
        finally:
            with contextlib.suppress(Exception):
                self.bg.run(self.http.aclose())
            self.server.stop()
            self.bg.close()

    # -- the end of an example: everything ends, then the record is checked whole ------------------

    async def _settle(self) -> None:
        await self._gather_readers()
        async with asyncio.timeout(HANG_TIMEOUT_S):
            # Closing every connection lets the server read what a client that left had sent:
            # a request it has not read yet may still make a run.
            await self.http.aclose()
            self.http = await self._client()
            # Requests whose clients left may still be making their runs, and runs whose clients
            # left (onDisconnect=continue) end by themselves; neither announces it, so this polls.
            while self.server.requests_in_flight() or self.server.services.manager.active_count:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
        runs = {s.run_id: (await self.http.get(f"/runs/{s.run_id}")).json() for s in self.streams.values()}
        for stream in self.streams.values():
            run = runs[stream.run_id]
            if run.get("error") == "run_not_found":  # its client left (or its worker restarted) first
                assert stream.left or stream.cut, (stream, run)
                assert not stream.events, (stream, run)
                assert not stream.v1_body, (stream, run)
                continue
            assert not run.get("live"), run
            if stream.stop_accepted:
                assert run["status"] == "interrupted", (stream, run)
            if stream.superseded and not (stream.stop_accepted or stream.cut or stream.left):
                assert run["status"] == "completed" or run["stopReason"] == "superseded", (stream, run)
            self._no_upstream_after_stop(stream, run)
            if stream.kind == "code" and stream.ended:
                await self._replay_equals_stream(stream)
        self._one_run_at_a_time_per_app()
        await self._history_is_the_completed_turns(runs)
        assert self.server.services.manager.active_count == 0

    def _no_upstream_after_stop(self, stream: Stream, run: dict[str, Any]) -> None:
        records = self._records(stream.run_id)
        if stream.stopped_before_start:
            assert records == [], (stream.run_id, records)
        if run["status"] != "interrupted" or run.get("stopRequestedAt") is None:
            return
        stopped_at = datetime.fromisoformat(run["stopRequestedAt"]).timestamp()
        late = [r for r in records if r.sent_at is not None and r.sent_at > stopped_at]
        assert late == [], (stream.run_id, stopped_at, late)

    async def _replay_equals_stream(self, stream: Stream) -> None:
        status, replay = await self._rejoin(stream.run_id, 0)
        assert status == 200, (stream.run_id, status)
        # A restarted worker kept only the run's row: it answers the terminal event, as sent.
        expected = stream.events if stream.worker == len(self.retired) else stream.events[-1:]
        assert [(e.event, e.id, e.data) for e in replay] == [(e.event, e.id, e.data) for e in expected]

    def _one_run_at_a_time_per_app(self) -> None:
        """A new run on an app starts once the old one is gone: their upstream requests never overlap."""
        for app in self.apps:
            spans = []
            for stream in self.streams.values():
                sent = [r.sent_at for r in self._records(stream.run_id) if r.sent_at is not None]
                if stream.app == app and sent:
                    spans.append((min(sent), max(sent), stream.run_id))
            spans.sort()
            for before, after in itertools.pairwise(spans):
                assert before[1] < after[0], (app, before, after)

    async def _history_is_the_completed_turns(self, runs: dict[str, dict[str, Any]]) -> None:
        for app in self.apps:
            messages = (await self.http.get(f"/apps/{app}/messages")).json()
            completed = [
                s for s in self.streams.values() if s.app == app and runs[s.run_id].get("status") == "completed"
            ]
            assert sorted({m["runId"] for m in messages}) == sorted(s.run_id for s in completed), messages
            for stream in completed:
                if stream.ended:
                    answer = [m["content"] for m in messages if m["runId"] == stream.run_id and m["role"] == "ai"]
                    assert answer == [text_of(stream.events)], stream.run_id

    # -- clients -----------------------------------------------------------------------------

    def _start(self, stream: Stream, reader: Coroutine[Any, Any, None]) -> None:
        stream.worker = len(self.retired)
        self.streams[stream.run_id] = stream
        stream.task = self.bg.run(_spawn(reader))

    async def _read_code(self, stream: Stream, url: str) -> None:
        async with open_stream(self.http, "GET", url) as (response, events):
            assert response.status_code == 200, response
            async for event in events:
                stream.events.append(event)
        stream.ended = True

    async def _read_v1(self, stream: Stream, prompt: str) -> None:
        body = {"model": "runforge-sim", "stream": True, "messages": [{"role": "user", "content": prompt}]}
        headers = {"X-Request-Id": stream.run_id}
        async with self.http.stream("POST", "/v1/chat/completions", json=body, headers=headers) as response:
            assert response.status_code == 200, response
            async for chunk in response.aiter_bytes():
                stream.v1_body += chunk
        assert stream.v1_body.rstrip().endswith(b"data: [DONE]"), stream.v1_body[-200:]
        stream.ended = True

    async def _rejoin(self, run_id: str, after: int) -> tuple[int, list[Event]]:
        url = f"/runs/{run_id}/events?lastEventId={run_id}:{after}"
        seen: list[Event] = []
        async with open_stream(self.http, "GET", url) as (response, events):
            if response.status_code != 200:
                assert response.status_code in (204, 404), response
                return response.status_code, seen
            async for event in events:
                seen.append(event)
                if event.event in TERMINAL:
                    break
        return 200, seen

    def _code_streams(self) -> list[Stream]:
        return [s for s in self.streams.values() if s.kind == "code"]

    def _records(self, run_id: str) -> list[RequestRecord]:
        servers = [*self.retired, self.server]
        return [r for server in servers for r in server.simulator.recorder.records(run_id)]

    async def _gather_readers(self) -> None:
        tasks = [s.task for s in self.streams.values() if s.task is not None]
        async with asyncio.timeout(HANG_TIMEOUT_S):
            await asyncio.gather(*tasks, return_exceptions=True)


def runs_status(machine: RunLifecycle, run_id: str) -> str:
    return str(machine.bg.run(machine.http.get(f"/runs/{run_id}")).json()["status"])


async def _spawn(reader: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.create_task(reader)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task


@pytest.mark.timeout(60 + 30 * EXAMPLES)  # ~2 s an example here; generous, only against hangs
def test_the_run_lifecycle_holds_its_invariants(settings: Settings) -> None:
    RunLifecycle.settings = settings
    run = RunLifecycle.TestCase
    run.settings = hypothesis.settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        derandomize=True,  # the same sequences on every run: CI is deterministic
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )
    run().runTest()
    print(f"\nmodel-based run: {RunLifecycle.steps_taken} steps in {EXAMPLES} examples")  # the long run's figure
