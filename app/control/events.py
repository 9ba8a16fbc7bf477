"""Run events: small dataclasses tagged with a ``kind``; how they look on the wire is app/wire.

Text deltas are ``kind = "message"`` (unnamed on SSE, so browsers deliver them to
``EventSource.onmessage`` as the seed page expects). Exactly one terminal event ends a run's
log; the log refuses anything after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from app.control.cancel import StopReason


@dataclass(frozen=True, slots=True)
class RunStarted:
    kind: ClassVar[str] = "run"
    terminal: ClassVar[bool] = False
    app_id: str | None  # None for a chat run

    def payload(self) -> dict[str, Any]:
        return {"appId": self.app_id}


@dataclass(frozen=True, slots=True)
class TextDelta:
    kind: ClassVar[str] = "message"
    terminal: ClassVar[bool] = False
    text: str

    def payload(self) -> dict[str, Any]:
        return {"d": self.text}


@dataclass(frozen=True, slots=True)
class ToolCallStarted:
    kind: ClassVar[str] = "tool_call"
    terminal: ClassVar[bool] = False
    call_id: str
    name: str
    args: dict[str, Any]

    def payload(self) -> dict[str, Any]:
        return {"callId": self.call_id, "name": self.name, "args": self.args}


@dataclass(frozen=True, slots=True)
class ToolCallFinished:
    kind: ClassVar[str] = "tool_result"
    terminal: ClassVar[bool] = False
    call_id: str
    name: str
    ok: bool
    summary: str

    def payload(self) -> dict[str, Any]:
        return {"callId": self.call_id, "name": self.name, "ok": self.ok, "summary": self.summary}


@dataclass(frozen=True, slots=True)
class TemplateChosen:
    """The preset matcher's decision for this run, and whether the preset was copied."""

    kind: ClassVar[str] = "template"
    terminal: ClassVar[bool] = False
    name: str | None
    score: float
    method: str  # exact | fuzzy | keywords | none
    copied: bool

    def payload(self) -> dict[str, Any]:
        return {"name": self.name, "score": round(self.score, 3), "method": self.method, "copied": self.copied}


@dataclass(frozen=True, slots=True)
class CodeBlock:
    """A fenced code block in the streamed answer opened or closed (html / multi_file runs)."""

    kind: ClassVar[str] = "code_block"
    terminal: ClassVar[bool] = False
    lang: str
    file: str | None  # the workspace file the block becomes on completion, if any
    status: str  # open | closed | unterminated (the answer ended inside it: not written)
    chars: int = 0

    def payload(self) -> dict[str, Any]:
        return {"lang": self.lang, "file": self.file, "status": self.status, "chars": self.chars}


@dataclass(frozen=True, slots=True)
class BuildEvent:
    """Progress of the build that follows a completed vue_project agent."""

    kind: ClassVar[str] = "build"
    terminal: ClassVar[bool] = False
    step: str  # install | build
    status: str  # started | output | skipped | finished | failed
    line: str = ""
    exit_code: int | None = None
    seconds: float | None = None

    def payload(self) -> dict[str, Any]:
        body: dict[str, Any] = {"step": self.step, "status": self.status}
        if self.line:
            body["line"] = self.line
        if self.exit_code is not None:
            body["exitCode"] = self.exit_code
        if self.seconds is not None:
            body["seconds"] = round(self.seconds, 3)
        return body


@dataclass(frozen=True, slots=True)
class UpstreamChunk:
    """One event of a chat run's upstream stream (``/v1/chat/completions``).

    ``frame`` is the event as the upstream sent it, relayed byte for byte to the /v1 client.
    SSE and WebSocket followers of the run see its text as a plain ``message`` event, and do
    not see chunks without text (role, finish, tool-call deltas).
    """

    kind: ClassVar[str] = "chunk"
    terminal: ClassVar[bool] = False
    text: str
    frame: bytes

    def payload(self) -> dict[str, Any]:
        return {"d": self.text}


@dataclass(frozen=True, slots=True)
class UpstreamOpened:
    """A chat run's upstream accepted the request (HTTP 200, an event stream): the /v1 client
    gets its response headers now. Not shown to SSE or WebSocket followers."""

    kind: ClassVar[str] = "upstream_opened"
    terminal: ClassVar[bool] = False

    def payload(self) -> dict[str, Any]:
        return {}


@dataclass(frozen=True, slots=True)
class Done:
    kind: ClassVar[str] = "done"
    terminal: ClassVar[bool] = True
    finish_reason: str
    steps: int
    tool_calls: int
    files: tuple[str, ...] = ()  # files the completion wrote (html / multi_file)
    preview_url: str | None = None
    checkpoint: str | None = None  # the commit of the workspace after this run

    def payload(self) -> dict[str, Any]:
        return {
            "finishReason": self.finish_reason,
            "steps": self.steps,
            "toolCalls": self.tool_calls,
            "files": list(self.files),
            "previewUrl": self.preview_url,
            "checkpoint": self.checkpoint,
        }


@dataclass(frozen=True, slots=True)
class Interrupted:
    kind: ClassVar[str] = "interrupted"
    terminal: ClassVar[bool] = True
    reason: StopReason
    mode: str = "immediate"

    def payload(self) -> dict[str, Any]:
        return {"reason": self.reason.value, "mode": self.mode}


@dataclass(frozen=True, slots=True)
class Failed:
    kind: ClassVar[str] = "failed"
    terminal: ClassVar[bool] = True
    code: str
    message: str

    def payload(self) -> dict[str, Any]:
        return {"error": {"code": self.code, "message": self.message}}


RunEvent = (
    RunStarted
    | TextDelta
    | ToolCallStarted
    | ToolCallFinished
    | TemplateChosen
    | CodeBlock
    | BuildEvent
    | UpstreamChunk
    | UpstreamOpened
    | Done
    | Interrupted
    | Failed
)


class LoggedEvent(NamedTuple):
    """An event as stored in a run's log: numbered, and encoded once for every subscriber.

    ``wire`` is the event as the transports send it, made by the log's encoder (an SSE frame:
    app/wire/sse.py), so streams send bytes as they are instead of re-encoding every event for
    every subscriber; it is empty for an event followers do not see. ``relay`` is an upstream
    chunk's frame for the /v1 client (chat runs). A tuple of atomic values is untracked by the
    garbage collector, so long logs do not lengthen GC pauses.
    """

    seq: int
    kind: str
    wire: bytes
    relay: bytes = b""
