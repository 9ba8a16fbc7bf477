"""The simulator's ASGI application: its routes, and for a chat request the resolved job, its
record, and the answer raced against the client leaving."""

from __future__ import annotations

import dataclasses
import time
from typing import Any
from urllib.parse import parse_qs

from app.simulator.answers import Job, answer
from app.simulator.config import SimulatorConfig
from app.simulator.encoding import Envelope, error_body, json_bytes
from app.simulator.exchange import Exchange, Receive, Scope, Send, race_disconnect, send_json
from app.simulator.recorder import RECORDED_PROMPT_CHARS, Recorder, RequestRecord
from app.simulator.requests import (
    RequestError,
    conversation_step,
    last_user_text,
    output_format,
    parse_chat_request,
    resolve_scenario,
)
from app.simulator.scenario_types import Turn
from app.simulator.scenarios import SCENARIOS


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
                await send_json(send, 200, json_bytes(self._models()))
            case "GET", "/_sim/requests":
                run_id = parse_qs(scope["query_string"].decode()).get("run_id", [None])[0]
                records = [dataclasses.asdict(r) for r in self.recorder.records(run_id)]
                await send_json(send, 200, json_bytes(records))
            case "GET", "/_sim/health":
                # `open`: requests whose response is neither finished nor closed by the client (a
                # soak ends with 0: every upstream connection a run opened was closed).
                await send_json(send, 200, json_bytes({"status": "ok", "open": self.recorder.open_requests()}))
            case _, path:
                await send_json(send, 404, error_body(f"no route for {path}", "not_found_error", "not_found"))

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
            error = error_body(exc.message, "invalid_request_error", exc.code)
            await send_json(send, exc.status, error)
            return
        record = dataclasses.replace(
            self._record(job, started_at), client_port=_client_port(scope), api_key=_bearer(scope)
        )
        exchange = Exchange(send, self.recorder, self.recorder.add(record))
        try:
            await race_disconnect(receive, answer(exchange, job), exchange)
        except BaseException as exc:
            self.recorder.note_failed(exchange.seq, repr(exc))
            raise

    def _job(self, scope: Scope, body: bytes) -> Job:
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        request = parse_chat_request(body, headers, self.config.model)
        scenario, params = resolve_scenario(request, self.config)
        step = conversation_step(request.messages)
        reply = scenario.reply(Turn(step, params, output_format(request.messages)))
        pace_ms = _first_set(params.pace_ms, scenario.default_pace_ms, self.config.pace_ms)
        envelope = Envelope(id=f"chatcmpl-sim-{time.monotonic_ns():x}", model=request.model)
        return Job(request, scenario.name, reply, step, pace_ms / 1000, envelope)

    def _record(self, job: Job, started_at: float) -> RequestRecord:
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
            last_user_message=last_user_text(job.request.messages)[:RECORDED_PROMPT_CHARS],
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
