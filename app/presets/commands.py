"""`runforge templates list | match PROMPT | check`: inspect the presets without a server or database."""

from __future__ import annotations

import sys
from pathlib import Path

from app.presets.check import check_catalog
from app.presets.manifest import load_catalog
from app.presets.matcher import match_prompt

__all__ = ["check_templates", "list_templates", "match_template"]


def list_templates(root: Path) -> int:
    """One line per preset (name, codeGenType, title), its triggers indented below; 1 if any failed to load."""
    catalog = load_catalog(root)
    for preset in catalog.presets:
        print(f"{preset.name}  {preset.code_gen_type}  {preset.title}")
        for trigger in preset.triggers:
            print(f"    {trigger}")
    for error in catalog.errors:
        print(f"runforge: {error}", file=sys.stderr)
    return 1 if catalog.errors else 0


def match_template(root: Path, prompt: str) -> int:
    """Exactly one line, `<name> <method> <score>` or `none`; exit 0 either way (no match is an answer)."""
    match = match_prompt(prompt, load_catalog(root).presets)
    print("none" if match.preset is None else f"{match.preset.name} {match.method} {match.score:.3f}")
    return 0


def check_templates(root: Path) -> int:
    """Every problem on its own line and exit 1, or `ok: N presets` and exit 0."""
    problems = check_catalog(root)
    for problem in problems:
        print(problem)
    if problems:
        return 1
    print(f"ok: {len(load_catalog(root).presets)} presets")
    return 0
