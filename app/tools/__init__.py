"""LLM-facing tools: their JSON schemas and the executor."""

from app.tools.registry import ToolResult, execute_tool
from app.tools.specs import MAX_ARGUMENT_CHARS, TOOL_DEFS, TOOL_SPECS, TOOLS_BY_NAME, ToolDef

__all__ = [
    "MAX_ARGUMENT_CHARS",
    "TOOLS_BY_NAME",
    "TOOL_DEFS",
    "TOOL_SPECS",
    "ToolDef",
    "ToolResult",
    "execute_tool",
]
