"""The job of a chat run: relay one streamed completion from the upstream, chunk by chunk.

Each upstream event becomes an ``UpstreamChunk`` in the run's log, carrying the event's bytes
for the /v1 client. A stop cancels this task at its ``async for``: leaving the ``async with``
closes the upstream response, so the provider stops generating at once.
"""

from __future__ import annotations

from app.control.events import UpstreamChunk, UpstreamOpened
from app.control.outcomes import Completion
from app.control.run import Run
from app.llm.client import LLMClient, UpstreamError
from app.proxy.exchange import ChatExchange, sse_frame


async def run_chat(run: Run, *, llm: LLMClient, exchange: ChatExchange) -> Completion:
    try:
        async with llm.open_relay(exchange.request.upstream_body, run.id) as frames:
            run.emit(UpstreamOpened())
            async for data, chunk in frames:
                text = exchange.add(chunk)
                if not exchange.is_usage_only(chunk):
                    run.emit(UpstreamChunk(text, sse_frame(data)))
    except UpstreamError as exc:
        exchange.upstream_error = exc  # the handler relays the provider's status and error body
        raise
    finally:
        run.note_upstream_closed()
        # Also on a stop: the run records what was generated until then.
        exchange.record_usage(run.stats)
    return Completion(exchange.finish_reason)
