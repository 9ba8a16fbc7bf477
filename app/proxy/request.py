"""A client's chat-completions body: validated, its Runforge fields taken out, ready to forward."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec

from app.control.run import RUN_ID_PATTERN
from app.errors import BadRequest

# The request id fields a client may add to the OpenAI body; never forwarded upstream.
ID_FIELDS = ("requestId", "messageId")

_encoder = msgspec.json.Encoder()


@dataclass(frozen=True, slots=True)
class ProxyRequest:
    run_id: str | None  # the client's requestId / messageId / X-Request-Id; None: generate one
    stream: bool
    include_usage: bool  # the client asked for the final usage chunk
    model: str
    upstream_body: bytes  # always a streaming request, with usage (see parse_proxy_request)
    prompt_chars: int  # size of the request, for a local estimate of prompt tokens
    summary: str  # the last user message, recorded on the run


def parse_proxy_request(raw: bytes, header_id: str | None, default_model: str, summary_chars: int) -> ProxyRequest:
    """Validate the body and build what the upstream gets.

    The upstream is always asked to stream, with usage: a non-streaming client is answered
    from the stream (so it can be interrupted with a partial message), and usage is recorded
    on the run whether the client asked for it or not.
    """
    body = _json_object(raw)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise BadRequest("'messages' must be a non-empty list of message objects", code="invalid_messages")
    model = body.get("model", default_model)
    if not isinstance(model, str) or not model or "\x00" in model:
        raise BadRequest("'model' must be a non-empty string (without NUL)", code="invalid_model")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise BadRequest("'stream' must be a boolean", code="invalid_stream")
    options = body.get("stream_options")
    include_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    run_id = _request_id(body, header_id)
    upstream = {k: v for k, v in body.items() if k not in ID_FIELDS}
    upstream |= {"model": model, "stream": True, "stream_options": {"include_usage": True}}
    return ProxyRequest(
        run_id=run_id,
        stream=stream,
        include_usage=include_usage,
        model=model,
        upstream_body=_encoder.encode(upstream),
        # The body's size stands in for the messages' (re-encoding them costs a copy per request).
        prompt_chars=len(raw),
        summary=_last_user_text(messages)[:summary_chars],  # the run's message (NULs dropped there)
    )


def _json_object(raw: bytes) -> dict[str, Any]:
    try:
        body = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise BadRequest("the request body is not valid JSON", code="invalid_json") from None
    except RecursionError:  # msgspec's refusal of a body nested deeper than it can recurse
        raise BadRequest("the request body is nested too deeply to decode", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object", code="invalid_json")
    return body


def _request_id(body: dict[str, Any], header_id: str | None) -> str | None:
    """requestId or messageId (the same thing under two names), else a valid X-Request-Id."""
    given = {name: body[name] for name in ID_FIELDS if body.get(name) is not None}
    for name, value in given.items():
        if not isinstance(value, str) or not RUN_ID_PATTERN.fullmatch(value):
            raise BadRequest(
                f"'{name}' must be 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
                code="invalid_request_id",
            )
    if len(set(given.values())) > 1:
        raise BadRequest("'requestId' and 'messageId' name the same request: send one of them", code="ambiguous_id")
    if given:
        return str(next(iter(given.values())))
    # An unusable header is ignored rather than refused: proxies add their own request ids.
    return header_id if header_id and RUN_ID_PATTERN.fullmatch(header_id) else None


def _last_user_text(messages: list[dict[str, Any]]) -> str:
    for message in reversed(messages):
        if message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # content parts
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""
