"""The OpenAI client wrapper: one place where SDK errors become run failures.

Errors the model should see (a bad tool call) never come through here; these end the run.
The stream is always closed with ``async with`` (measured: a bare ``break`` left the upstream
connection open for over a second), which also runs when the run's task is cancelled.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import httpx2
import msgspec
import openai
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from app.control.outcomes import RunFailed
from app.llm.chunks import Chunk, StreamProblem, iter_frames
from app.settings import LLMSettings

# Sent on every upstream request so the simulator (and provider logs) can tie it to a run.
RUN_ID_HEADER = "X-Runforge-Run-Id"
# When this server began sending the request (its wall clock, seconds), stamped by httpx's request
# hook just before the request goes out: what "no upstream request after a stop" is checked
# against, on the same clock as the run's stopRequestedAt. The simulator's own arrival time is
# later by its event loop's lag, which under load exceeds the time between a send and a stop.
SENT_AT_HEADER = "X-Runforge-Sent-At"

_encoder = msgspec.json.Encoder()
# The openai SDK's own defaults: many concurrent streams, a bounded idle pool.
_POOL_LIMITS = httpx2.Limits(max_connections=1000, max_keepalive_connections=100)
# Providers quote the API key in their 401 answers (most mask it, not all): it never leaves the
# server, so it is cut out of what is relayed or recorded. Shorter "keys" (the simulator's "sim")
# are no secret, and replacing them would garble ordinary text.
REDACTED = "[redacted]"
_MIN_SECRET_CHARS = 8


class UpstreamError(RunFailed):
    """The LLM provider failed; the run ends with ``failed``.

    ``status`` and ``body`` are the provider's HTTP status and error JSON when it answered
    with one: the /v1 proxy relays them to its client as they are.
    """

    def __init__(self, code: str, message: str, status: int | None = None, body: object = None) -> None:
        super().__init__(code, message)
        self.status = status
        self.body = body


class LLMClient:
    def __init__(self, settings: LLMSettings, base_url: str) -> None:
        self.model = settings.model
        self.base_url = base_url
        # One connection pool for the SDK and the proxy's raw requests (the SDK's own limits).
        self._http = httpx2.AsyncClient(
            timeout=settings.timeout_s, limits=_POOL_LIMITS, event_hooks={"request": [_stamp_sent_at]}
        )
        self._client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=settings.api_key or "none",
            max_retries=settings.max_retries,
            timeout=settings.timeout_s,
            http_client=self._http,
        )
        # Parsed once: httpx parses a string URL on every request (~30 µs, measured).
        self._completions_url = httpx2.URL(base_url.rstrip("/") + "/chat/completions")
        self._auth = f"Bearer {settings.api_key or 'none'}"
        self._secret = settings.api_key if len(settings.api_key) >= _MIN_SECRET_CHARS else None

    @asynccontextmanager
    async def stream_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]],
        run_id: str,
    ) -> AsyncIterator[AsyncIterator[Chunk]]:
        """Open a streaming completion; the response is closed when the block exits.

        The SDK sends the request; the body is decoded by :func:`iter_chunks` (see
        app/llm/chunks.py for why), reading the SDK stream's own HTTP response.
        """
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if tools:  # some providers refuse an empty tool list
            request["tools"] = tools
        stream = self.open_stream(_encoder.encode(request), run_id)
        async with stream as frames, contextlib.aclosing(_chunks_only(frames)) as chunks:
            yield chunks

    @asynccontextmanager
    async def open_stream(self, body: bytes, run_id: str) -> AsyncIterator[AsyncIterator[tuple[bytes, Chunk]]]:
        """POST a pre-encoded streaming request; yields (raw event data, chunk) pairs.

        The response is closed when the block exits, normally or by cancellation.
        """
        headers = {RUN_ID_HEADER: run_id, "Content-Type": "application/json"}
        with _upstream_errors(self._secret):
            # The SDK's post() with a pre-encoded body: same auth, retries and status errors as
            # chat.completions.create(), without its per-request TypedDict transform (~2 ms of
            # event-loop CPU per request, measured; msgspec encodes the body in ~4 µs).
            stream = await self._client.post(
                "/chat/completions",
                cast_to=ChatCompletion,
                content=body,
                options={"headers": headers},
                stream=True,
                stream_cls=openai.AsyncStream[ChatCompletionChunk],
            )
            async with stream:
                _require_event_stream(stream.response)
                async with contextlib.aclosing(iter_frames(stream.response.aiter_bytes())) as frames:
                    yield frames

    @asynccontextmanager
    async def open_relay(self, body: bytes, run_id: str) -> AsyncIterator[AsyncIterator[tuple[bytes, Chunk]]]:
        """The /v1 proxy's upstream request: the client's body as it is, sent without the SDK.

        Measured here: the SDK's request building costs ~0.6 ms before the upstream sees the
        request, most of the proxy's time-to-first-byte budget. No retries either: retrying is
        the proxy client's decision. The response is closed when the block exits.
        """
        headers = {
            "Authorization": self._auth,
            "Content-Type": "application/json",
            "Accept": "text/event-stream",
            RUN_ID_HEADER: run_id,
        }
        with _upstream_errors(self._secret):
            request = self._http.build_request("POST", self._completions_url, content=body, headers=headers)
            response = await self._http.send(request, stream=True)
            try:
                if response.status_code >= 400:
                    await response.aread()
                    raise status_error(response.status_code, _json_object(response.content))
                _require_event_stream(response)
                async with contextlib.aclosing(iter_frames(response.aiter_bytes())) as frames:
                    yield frames
            finally:
                await response.aclose()

    async def list_models(self) -> dict[str, Any]:
        """The provider's ``GET /models`` answer, as it sent it (but for the API key)."""
        with _upstream_errors(self._secret):
            try:
                response = await self._client.get("/models", cast_to=httpx2.Response)
            except openai.APIError as exc:
                raise translate_error(exc) from exc
            except httpx2.HTTPError as exc:
                raise UpstreamError("upstream_unavailable", "could not reach the model provider") from exc
        body = _json_object(response.content)
        if body is None:
            raise UpstreamError("upstream_malformed", "the model provider's model list is not a JSON object")
        redacted: dict[str, Any] = redact(body, self._secret)
        return redacted

    async def close(self) -> None:
        await self._client.close()
        await self._http.aclose()


async def _stamp_sent_at(request: httpx2.Request) -> None:
    request.headers[SENT_AT_HEADER] = f"{time.time():.6f}"


@contextlib.contextmanager
def _upstream_errors(secret: str | None = None) -> Iterator[None]:
    """Every way an upstream request fails becomes an UpstreamError (the edge of the SDK),
    without ``secret`` (the API key) in its message or in the provider's body it carries."""
    try:
        try:
            yield
        except openai.APIError as exc:
            raise translate_error(exc) from exc
        except StreamProblem as exc:
            raise UpstreamError(exc.code, str(exc)) from exc
        except httpx2.TimeoutException as exc:
            raise UpstreamError("upstream_timeout", "the model stopped sending data") from exc
        except (httpx2.HTTPError, httpx2.StreamError) as exc:
            raise UpstreamError("upstream_unavailable", "the connection to the model provider was lost") from exc
    except UpstreamError as exc:
        if secret is not None:
            exc.message = redact(exc.message, secret)
            exc.body = redact(exc.body, secret)
            exc.args = tuple(redact(arg, secret) for arg in exc.args)
        raise


def redact(value: Any, secret: str | None) -> Any:
    """``value`` (JSON-like) with every occurrence of ``secret`` in its strings replaced."""
    if secret is None:
        return value
    if isinstance(value, str):
        return value.replace(secret, REDACTED)
    if isinstance(value, dict):
        return {redact(key, secret): redact(item, secret) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item, secret) for item in value]
    return value


async def _chunks_only(frames: AsyncIterator[tuple[bytes, Chunk]]) -> AsyncGenerator[Chunk, None]:
    async for _, chunk in frames:
        yield chunk


def _json_object(raw: bytes) -> dict[str, Any] | None:
    try:
        value = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        return None
    return value if isinstance(value, dict) else None


def _require_event_stream(response: httpx2.Response) -> None:
    content_type = response.headers.get("content-type", "")
    if not content_type.startswith("text/event-stream"):
        raise UpstreamError(
            "upstream_error", f"the model provider answered {content_type or 'no content type'}, not a stream"
        )


def translate_error(exc: openai.APIError) -> UpstreamError:
    if isinstance(exc, openai.APITimeoutError):
        return UpstreamError("upstream_timeout", "the model did not answer in time")
    if isinstance(exc, openai.APIConnectionError):
        return UpstreamError("upstream_unavailable", "could not reach the model provider")
    if isinstance(exc, openai.APIStatusError):
        return status_error(exc.status_code, _json_object(exc.response.content))
    return UpstreamError("upstream_error", f"the model provider failed: {_short(exc.message)}")


def status_error(status: int, body: dict[str, Any] | None) -> UpstreamError:
    if status == 429:
        return UpstreamError("upstream_rate_limited", "the model provider is rate limiting requests", status, body)
    return UpstreamError("upstream_error", f"the model provider answered HTTP {status}", status, body)


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "…"
