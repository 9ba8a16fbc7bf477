"""Prompts live as files next to this module, one per generation type, not as literals in code.

Each file's first line is app/llm/prompt_format.py's OUTPUT_FORMAT_LINE and the type: the
simulator reads it back to answer as the prompt asks.
"""

from __future__ import annotations

from functools import cache
from importlib import resources

PROMPT_FILES = {"html": "html.md", "multi_file": "multi_file.md", "vue_project": "vue_project.md"}


@cache
def system_prompt(code_gen_type: str) -> str:
    """The system prompt for a generation type (unknown types get the vue_project prompt)."""
    name = PROMPT_FILES.get(code_gen_type, PROMPT_FILES["vue_project"])
    return resources.files("app.agent").joinpath(f"prompts/{name}").read_text(encoding="utf-8")
