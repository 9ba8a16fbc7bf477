"""How a resolved request is answered: an HTTP error, an SSE stream paced token by token (with
its injected fault, if any), or the same content in one body after the same total delay.

Every streamed token is its own SSE chunk, paced by ``pace_ms``, so a stop can land between
tokens, inside a tool call's arguments, or before the first token.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from app.simulator.encoding import Envelope, deltas, error_body, generated_tokens, token_usage
from app.simulator.exchange import SSE_HEADERS, EventWriter, Exchange
from app.simulator.requests import ChatRequest
from app.simulator.scenario_types import Fault, Reply


@dataclass(frozen=True)
class Job:
    """Everything needed to answer one resolved chat request."""

    request: ChatRequest
    scenario: str
    reply: Reply
    step: int
    pace_s: float
    envelope: Envelope


async def answer(exchange: Exchange, job: Job) -> None:
    reply = job.reply
    if reply.header_delay_s:
        await asyncio.sleep(reply.header_delay_s)
    if reply.http_status is not None:
        await _answer_http_error(exchange, reply.http_status)
    elif job.request.stream:
        await _answer_stream(exchange, job)
    else:
        await _answer_whole(exchange, job)


async def _answer_http_error(exchange: Exchange, status: int) -> None:
    kind = "rate_limit_error" if status == 429 else "server_error" if status >= 500 else "invalid_request_error"
    body = error_body(f"simulated HTTP {status}", kind, f"sim_http_{status}")
    # retry-after: 0 lets a retrying client come back at once instead of backing off.
    extra = [(b"retry-after", b"0")] if status == 429 else []
    await exchange.json(status, body, extra)


async def _answer_stream(exchange: Exchange, job: Job) -> None:
    await exchange.start(200, SSE_HEADERS)
    if job.reply.first_token_delay_s:
        await asyncio.sleep(job.reply.first_token_delay_s)
    writer = EventWriter(exchange, job.pace_s)
    for sent, delta in enumerate(deltas(job.reply, job.step)):
        fault = job.reply.fault
        if fault and sent == fault.after and not await _inject_fault(writer, fault):
            return
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}
        await writer.event(job.envelope.chunk([choice]))
    await _finish_stream(writer, job, generated_tokens(job.reply, job.step))


async def _inject_fault(writer: EventWriter, fault: Fault) -> bool:
    """Send the broken event; return whether the stream goes on afterwards."""
    if fault.kind == "malformed":
        await writer.event(b"{not json", paced=False)
        return True
    await writer.event(error_body("simulated upstream failure", "server_error", "sim_error"), paced=False)
    await writer.close()  # a failing upstream ends the stream without [DONE]
    return False


async def _finish_stream(writer: EventWriter, job: Job, tokens: int) -> None:
    last = {"index": 0, "delta": {}, "logprobs": None, "finish_reason": job.reply.finish_reason}
    await writer.event(job.envelope.chunk([last]), paced=False)
    if job.request.include_usage:
        await writer.event(job.envelope.chunk([], usage=token_usage(job.request, tokens)), paced=False)
    await writer.event(b"[DONE]", paced=False)
    await writer.close()


async def _answer_whole(exchange: Exchange, job: Job) -> None:
    """Non-streaming: the same content, after the same total delay, in one body."""
    reply = job.reply
    chunks = sum(1 for _ in deltas(reply, job.step))
    if reply.fault:
        chunks = reply.fault.after
    await asyncio.sleep(reply.first_token_delay_s + chunks * job.pace_s)
    if reply.fault and reply.fault.kind == "error":
        await exchange.json(500, error_body("simulated upstream failure", "server_error", "sim_error"))
    elif reply.fault:
        await exchange.json(200, b"{not json")
    else:
        usage = token_usage(job.request, generated_tokens(reply, job.step))
        await exchange.json(200, job.envelope.completion(reply, job.step, usage))
