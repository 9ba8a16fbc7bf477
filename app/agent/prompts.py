"""Prompts live as files next to this module, not as literals in code."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def system_prompt() -> str:
    return resources.files("app.agent").joinpath("prompts/system.md").read_text(encoding="utf-8")
