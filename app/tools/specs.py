"""The tools offered to the model: one table drives both the JSON schemas and argument parsing."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from app.workspace.fs import MAX_WRITE_BYTES
from app.workspace.paths import show_path

MAX_ARGUMENT_CHARS = 2 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Param:
    name: str
    description: str
    default: str | None = None  # None means required; every parameter is a string


@dataclass(frozen=True, slots=True)
class ToolDef:
    name: str
    description: str
    params: tuple[Param, ...] = ()


class ArgumentError(Exception):
    """The model's arguments do not match the tool's schema."""


_PATH_HELP = "Path relative to the workspace root, with / separators (no '..', no absolute paths)."

TOOL_DEFS: tuple[ToolDef, ...] = (
    ToolDef(
        "list_dir",
        "List a directory of the workspace: names, kinds and sizes. Use '.' for the workspace root.",
        (Param("path", _PATH_HELP, default="."),),
    ),
    ToolDef(
        "read_file",
        "Read a UTF-8 text file from the workspace. Very large files are truncated.",
        (Param("path", _PATH_HELP),),
    ),
    ToolDef(
        "write_file",
        f"Create or overwrite a file with its complete new content (at most {MAX_WRITE_BYTES} bytes). "
        "Missing parent directories are created.",
        (Param("path", _PATH_HELP), Param("content", "The full new content of the file.")),
    ),
    ToolDef(
        "modify_file",
        "Replace one exact occurrence of old_text with new_text in a file. old_text must occur exactly "
        "once: include enough surrounding lines to make it unique.",
        (
            Param("path", _PATH_HELP),
            Param("old_text", "The exact text to replace (must occur exactly once)."),
            Param("new_text", "The text to put in its place."),
        ),
    ),
    ToolDef(
        "delete_file",
        "Delete one file (not a directory). Core project files such as package.json, index.html, "
        "the vite config, src/main.* and src/App.vue cannot be deleted.",
        (Param("path", _PATH_HELP),),
    ),
    ToolDef("exit", "Call this once the work is complete. Takes no arguments."),
)

TOOLS_BY_NAME: dict[str, ToolDef] = {tool.name: tool for tool in TOOL_DEFS}


def _property(param: Param) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "description": param.description}
    if param.default is not None:
        schema["default"] = param.default
    return schema


def _spec(tool: ToolDef) -> dict[str, Any]:
    parameters = {
        "type": "object",
        "properties": {param.name: _property(param) for param in tool.params},
        "required": [param.name for param in tool.params if param.default is None],
        "additionalProperties": False,
    }
    function = {"name": tool.name, "description": tool.description, "parameters": parameters}
    return {"type": "function", "function": function}


TOOL_SPECS: list[dict[str, Any]] = [_spec(tool) for tool in TOOL_DEFS]


# json.loads only produces these exact types.
_JSON_TYPES: dict[type, str] = {
    bool: "boolean",
    int: "number",
    float: "number",
    str: "string",
    list: "array",
    dict: "object",
    type(None): "null",
}


def _json_type(value: object) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _expected(tool: ToolDef) -> str:
    return ", ".join(param.name for param in tool.params) or "no arguments"


def _load_object(tool: ToolDef, raw: str) -> dict[str, object]:
    if len(raw) > MAX_ARGUMENT_CHARS:
        raise ArgumentError(f"arguments are too large ({len(raw)} characters, limit {MAX_ARGUMENT_CHARS})")
    if raw.strip() == "":  # models often send "" for a tool without parameters
        return {}
    try:
        data = json.loads(raw)
    except RecursionError:
        raise ArgumentError("arguments are nested too deeply to parse") from None
    except ValueError as exc:
        raise ArgumentError(
            f"arguments are not valid JSON ({exc}); expected an object with: {_expected(tool)}"
        ) from None
    if not isinstance(data, dict):
        raise ArgumentError(f"arguments must be a JSON object, got {_json_type(data)}")
    return data


def parse_arguments(tool: ToolDef, raw: str) -> dict[str, str]:
    """Validate the model's JSON arguments against ``tool``; return every parameter as a string."""
    data = _load_object(tool, raw)
    unknown = sorted(set(data) - {param.name for param in tool.params})
    if unknown:
        shown = ", ".join(show_path(name, 40) for name in unknown[:5])
        raise ArgumentError(f"unexpected argument(s) {shown}; expected: {_expected(tool)}")
    values: dict[str, str] = {}
    for param in tool.params:
        if param.name not in data and param.default is None:
            raise ArgumentError(f"missing required argument '{param.name}'")
        value = data.get(param.name, param.default)
        if not isinstance(value, str):
            raise ArgumentError(f"argument '{param.name}' must be a string, got {_json_type(value)}")
        values[param.name] = value
    return values
