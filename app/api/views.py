"""JSON views of stored and live objects (camelCase, ISO timestamps)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

from app.checkpoints import Checkpoint, CheckpointDiff
from app.control.run import ACTIVE_STATUSES
from app.control.run import Run as LiveRun
from app.store.models import App, ChatMessage, RunRow


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value else None


class AppView(msgspec.Struct):
    """What app_view returns, for the OpenAPI schema (the handlers return the dicts)."""

    id: str
    name: str
    codeGenType: str
    initPrompt: str | None
    ownerId: str
    createdAt: str | None
    updatedAt: str | None
    previewLink: str
    previewReady: bool


class CreatedAppView(AppView):
    codeGenTypeRule: str  # what chose codeGenType: "given", "template:<name>", or a keyword rule


class RunError(msgspec.Struct):
    code: str
    message: str | None


class RunView(msgspec.Struct):
    """What live_run_view and row_run_view return, for the OpenAPI schema."""

    runId: str
    kind: str
    appId: str | None
    status: str
    createdAt: str | None
    startedAt: str | None
    stopRequestedAt: str | None
    endedAt: str | None
    stopReason: str | None
    finishReason: str | None
    error: RunError | None
    steps: int
    toolCallsExecuted: int
    toolCallsSkipped: int
    usage: dict[str, Any] | None
    lastSeq: int
    live: bool
    worker: str | None = None  # a run this worker does not hold: the worker that owns (owned) it


def app_view(app: App, preview_link: str, preview_ready: bool) -> dict[str, Any]:
    return {
        "previewLink": preview_link,
        "previewReady": preview_ready,
        "id": app.id,
        "name": app.name,
        "codeGenType": app.code_gen_type,
        "initPrompt": app.init_prompt,
        "ownerId": app.owner_id,
        "createdAt": _iso(app.created_at),
        "updatedAt": _iso(app.updated_at),
    }


def message_view(message: ChatMessage) -> dict[str, Any]:
    return {
        "id": message.id,
        "runId": message.run_id,
        "role": message.role,
        "content": message.content,
        "createdAt": _iso(message.created_at),
    }


def live_run_view(run: LiveRun) -> dict[str, Any]:
    stats = run.stats
    error = {"code": run.error.code, "message": run.error.message} if run.error else None
    return {
        "runId": run.id,
        "kind": run.kind.value,
        "appId": run.app_id,
        "status": run.status.value,
        "createdAt": _iso(run.created_at),
        "startedAt": _iso(run.started_at),
        "stopRequestedAt": _iso(run.stop_requested_at),
        "endedAt": _iso(run.ended_at),
        "stopReason": run.stop_reason.value if run.stop_reason else None,
        "finishReason": run.finish_reason,
        "error": error,
        "steps": stats.steps,
        "toolCallsExecuted": stats.executed,
        "toolCallsSkipped": stats.skipped,
        "usage": stats.usage(),
        "lastSeq": run.log.last_seq,
        "live": not run.finished,
    }


def row_run_view(row: RunRow) -> dict[str, Any]:
    error = {"code": row.error_code, "message": row.error_message} if row.error_code else None
    return {
        "runId": row.id,
        "kind": row.kind,
        "appId": row.app_id,
        "status": row.status,
        "createdAt": _iso(row.created_at),
        "startedAt": _iso(row.started_at),
        "stopRequestedAt": _iso(row.stop_requested_at),
        "endedAt": _iso(row.ended_at),
        "stopReason": row.stop_reason,
        "finishReason": row.finish_reason,
        "error": error,
        "steps": row.steps,
        "toolCallsExecuted": row.tool_calls_executed,
        "toolCallsSkipped": row.tool_calls_skipped,
        "usage": row.usage,
        "lastSeq": row.last_seq,
        # Active on another worker (several workers): its events can be joined from here.
        "live": row.status in ACTIVE_STATUSES,
        "worker": row.owner_worker,
    }


def checkpoint_diff_view(diff: CheckpointDiff) -> dict[str, Any]:
    files = [
        {
            "path": f.path,
            "status": f.status,
            "added": f.added,
            "removed": f.removed,
            "binary": f.binary,
            "diff": f.diff,
            "truncated": f.truncated,
        }
        for f in diff.files
    ]
    return {"sha": diff.sha, "parent": diff.parent, "files": files, "truncated": diff.truncated}


def checkpoint_view(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "sha": checkpoint.sha,
        "runId": checkpoint.run_id,
        "kind": checkpoint.kind,
        "createdAt": _iso(checkpoint.created_at),
        "summary": checkpoint.summary,
        "files": checkpoint.files,
        "filesChanged": checkpoint.files_changed,
    }
