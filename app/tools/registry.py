"""Executing a tool call from the model against the workspace.

Bad input from the model (unknown tool, broken JSON, a refused path, a missing file) becomes a
``ToolResult(ok=False)`` whose ``output`` tells the model what to fix. A stopped run is different:
:class:`RunCancelled` propagates, because the run is over and nobody is listening for a result.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from app.control.cancel import StopGate, to_thread_to_the_end
from app.tools.specs import TOOLS_BY_NAME, ArgumentError, parse_arguments
from app.workspace import fs
from app.workspace.paths import WorkspaceError, relative_display, resolve_in_workspace, show_path

_T = TypeVar("_T")

_SUMMARY_CHARS = 100


@dataclass(frozen=True, slots=True)
class ToolResult:
    ok: bool
    output: str  # the content of the tool message sent back to the model
    summary: str  # one short line for the UI
    is_exit: bool = False
    side_effect: bool = False  # True when the tool changed the workspace


Handler = Callable[[dict[str, str], Path, StopGate], ToolResult]


def human_size(size: int) -> str:
    if size < 1024:
        return f"{size} B"
    if size < 1024 * 1024:
        return f"{size / 1024:.1f} KB"
    return f"{size / (1024 * 1024):.1f} MB"


def _failure(message: str) -> ToolResult:
    first_line = message.splitlines()[0] if message else "failed"
    return ToolResult(ok=False, output=f"error: {message}", summary=show_path(f"error: {first_line}", _SUMMARY_CHARS))


def _shown(root: Path, path: str) -> str:
    return show_path(relative_display(root, resolve_in_workspace(root, path)))


def _format_entry(entry: fs.DirEntry) -> str:
    if entry.kind == "dir":
        return f"{entry.name}/"
    if entry.kind == "file":
        return f"{entry.name}  ({human_size(entry.size)})"
    return f"{entry.name}  ({'symlink' if entry.kind == 'symlink' else 'special file'})"


def _list_dir(args: dict[str, str], root: Path, gate: StopGate) -> ToolResult:
    # One extra entry tells us whether the listing was cut.
    entries = fs.list_dir(root, args["path"], max_entries=fs.MAX_DIR_ENTRIES + 1)
    shown = _shown(root, args["path"])
    shown_entries = entries[: fs.MAX_DIR_ENTRIES]
    lines = [_format_entry(entry) for entry in shown_entries]
    if len(entries) > len(shown_entries):
        lines.append(f"[... more entries not shown (limit {fs.MAX_DIR_ENTRIES})]")
    body = "\n".join(lines) if lines else "(empty directory)"
    summary = f"listed {shown} ({len(shown_entries)} entries)"
    return ToolResult(True, f"contents of {shown}:\n{body}", summary)


def _read_file(args: dict[str, str], root: Path, gate: StopGate) -> ToolResult:
    text = fs.read_text(root, args["path"])
    shown = _shown(root, args["path"])
    return ToolResult(True, text or "(empty file)", f"read {shown}")


def _write_file(args: dict[str, str], root: Path, gate: StopGate) -> ToolResult:
    written = fs.write_text_atomic(root, args["path"], args["content"], gate)
    shown = _shown(root, args["path"])
    summary = f"wrote {shown} ({human_size(written)})"
    return ToolResult(True, f"wrote {written} bytes to {shown}", summary, side_effect=True)


def _modify_file(args: dict[str, str], root: Path, gate: StopGate) -> ToolResult:
    fs.modify_text_atomic(root, args["path"], args["old_text"], args["new_text"], gate)
    shown = _shown(root, args["path"])
    return ToolResult(True, f"modified {shown}: replaced 1 occurrence", f"modified {shown}", side_effect=True)


def _delete_file(args: dict[str, str], root: Path, gate: StopGate) -> ToolResult:
    fs.delete_file(root, args["path"], gate)
    shown = _shown(root, args["path"])
    return ToolResult(True, f"deleted {shown}", f"deleted {shown}", side_effect=True)


_HANDLERS: dict[str, Handler] = {
    "list_dir": _list_dir,
    "read_file": _read_file,
    "write_file": _write_file,
    "modify_file": _modify_file,
    "delete_file": _delete_file,
}


def _os_error_message(name: str, args: dict[str, str], exc: OSError) -> str:
    # str(exc) carries absolute host paths; show the model's own path and the reason only.
    reason = exc.strerror or type(exc).__name__
    return f"{name} failed for {show_path(args.get('path', '.'))}: {reason}"


async def execute_tool(name: str, raw_arguments: str, workspace: Path, gate: StopGate) -> ToolResult:
    """Run the tool ``name`` with the model's JSON ``raw_arguments`` inside ``workspace``.

    Raises :class:`RunCancelled` if the run is (or gets) stopped; every other problem is
    reported as ``ToolResult(ok=False)``.
    """
    gate.check()  # a stopped run starts no tool, not even a failing one
    tool = TOOLS_BY_NAME.get(name)
    if tool is None:
        known = ", ".join(TOOLS_BY_NAME)
        return _failure(f"unknown tool '{show_path(name, 40)}'; available tools: {known}")
    try:
        args = parse_arguments(tool, raw_arguments)
    except ArgumentError as exc:
        return _failure(f"invalid arguments for {name}: {exc}")
    if name == "exit":
        return ToolResult(True, "ok: finishing the run", "done", is_exit=True)
    try:
        # Worker thread: file I/O must not block the event loop. RunCancelled is not caught here.
        return await to_thread_to_the_end(_HANDLERS[name], args, workspace, gate)
    except WorkspaceError as exc:
        return _failure(str(exc))
    except OSError as exc:
        return _failure(_os_error_message(name, args, exc))
