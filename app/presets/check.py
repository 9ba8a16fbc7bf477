"""Static checks for presets (`runforge templates check`, and a test against the real catalog).

A preset is copied verbatim into a user's workspace, so every mistake in it becomes the user's
first bug. These checks catch what can be caught without installing or building anything:
missing entry files, broken references from index.html, build/VCS leftovers, symlinks (which
the copy would silently drop) and triggers that would not select their own preset.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path

from app.presets.manifest import Catalog, Preset, load_catalog
from app.presets.matcher import Matcher, normalise
from app.workspace.fs import SKIP_DIRS

__all__ = ["check_catalog", "check_preset"]

# src="..." / href="..." attributes; good enough for the hand-written index.html of a preset.
_REFERENCE = re.compile(r"""\b(?:src|href)\s*=\s*(["'])(.*?)\1""", re.IGNORECASE | re.DOTALL)
_EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|//|#)", re.IGNORECASE)  # http:, data:, mailto:, //cdn, #top
_VITE_CONFIGS = ("vite.config.js", "vite.config.ts", "vite.config.mjs")
_MAIN_FILES = ("src/main.js", "src/main.ts")
_MULTI_FILE_ASSETS = ("style.css", "script.js")  # besides index.html, linked from it by these names


def _walk(project: Path) -> Iterator[tuple[str, os.DirEntry[str]]]:
    """Every entry under ``project`` as (relative POSIX path, entry); symlinks are not entered."""
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(project / rel_dir) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            yield rel, entry
            if entry.is_dir(follow_symlinks=False) and entry.name not in SKIP_DIRS:
                stack.append(rel)


def _tree_problems(project: Path) -> list[str]:
    problems: list[str] = []
    for rel, entry in _walk(project):
        if entry.is_symlink():
            problems.append(f"{rel} is a symlink (presets are copied without symlinks)")
        elif entry.name in SKIP_DIRS:
            problems.append(f"{rel} must not be part of a preset (build output or VCS data)")
        elif not entry.is_dir(follow_symlinks=False) and not entry.is_file(follow_symlinks=False):
            problems.append(f"{rel} is not a regular file")
    return problems


def _missing(project: Path, names: tuple[str, ...]) -> list[str]:
    return [f"{name} is missing" for name in names if not (project / name).is_file()]


def _local_references(html: str) -> list[str]:
    """Local targets of src/href in ``html``, without query string or fragment."""
    found = (match.group(2).strip() for match in _REFERENCE.finditer(html))
    return [re.split(r"[?#]", ref, maxsplit=1)[0] for ref in found if ref and not _EXTERNAL.match(ref)]


def _reference_problem(project: Path, ref: str, roots: tuple[str, ...]) -> str | None:
    # "/x" is served from the project root (and, in Vite, from public/); "x" is beside index.html.
    relative = ref.lstrip("/")
    if not (project / relative).resolve().is_relative_to(project.resolve()):
        return f"index.html references {ref}, which is outside the project"
    bases = [project / root for root in roots] if ref.startswith("/") else [project]
    if not any((base / relative).exists() for base in bases):
        return f"index.html references {ref}, which is missing"
    return None


def _html_problems(project: Path, roots: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(problems, local references) of project/index.html."""
    index = project / "index.html"
    if not index.is_file():
        return ["index.html is missing"], []
    refs = _local_references(index.read_text(encoding="utf-8", errors="replace"))
    problems = [problem for ref in refs if (problem := _reference_problem(project, ref, roots)) is not None]
    return problems, refs


def _package_problems(project: Path) -> list[str]:
    try:
        package = json.loads((project / "package.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return ["package.json is missing"]
    except (OSError, ValueError) as exc:
        return [f"package.json is not valid JSON: {exc}"]
    scripts = package.get("scripts") if isinstance(package, dict) else None
    if not isinstance(scripts, dict) or not isinstance(scripts.get("build"), str) or not scripts["build"].strip():
        return ["package.json has no scripts.build"]
    return []


def _vue_problems(project: Path) -> list[str]:
    problems = _package_problems(project)
    if not any((project / name).is_file() for name in _VITE_CONFIGS):
        problems.append(f"no Vite config ({' / '.join(_VITE_CONFIGS)})")
    if not any((project / name).is_file() for name in _MAIN_FILES):
        problems.append(f"no entry module ({' / '.join(_MAIN_FILES)})")
    return problems + _html_problems(project, ("", "public"))[0]


def _multi_file_problems(project: Path) -> list[str]:
    problems = _missing(project, _MULTI_FILE_ASSETS)
    html_problems, refs = _html_problems(project, ("",))
    targets = {ref.lstrip("/").removeprefix("./") for ref in refs}
    unreferenced = [name for name in _MULTI_FILE_ASSETS if name not in targets]
    if (project / "index.html").is_file():
        problems += [f"index.html does not reference {name}" for name in unreferenced]
    return html_problems + problems


def _html_only_problems(project: Path) -> list[str]:
    return _html_problems(project, ("",))[0]


_TYPE_CHECKS: dict[str, Callable[[Path], list[str]]] = {
    "vue_project": _vue_problems,
    "multi_file": _multi_file_problems,
    "html": _html_only_problems,
}


def _manifest_problems(preset: Preset) -> list[str]:
    problems = [
        f"{field} is empty" for field in ("title", "description", "instruction") if not getattr(preset, field).strip()
    ]
    if not preset.triggers:
        problems.append("triggers is empty")
    if not preset.keywords:
        problems.append("keywords is empty")
    problems += [
        f"keyword {keyword!r} has no letters or digits" for keyword in preset.keywords if not normalise(keyword)
    ]
    return problems


def check_preset(preset: Preset) -> list[str]:
    """Problems of one preset, each prefixed with its name; empty when the preset is fine."""
    project = preset.project_dir
    type_check = _TYPE_CHECKS.get(preset.code_gen_type)
    if project.is_symlink() or not project.is_dir():
        problems = ["project/ is missing or not a directory"]
    elif type_check is None:  # only for a Preset built by hand: load_preset refuses unknown types
        problems = [f"codeGenType {preset.code_gen_type!r} is unknown"]
    else:
        problems = _tree_problems(project) + type_check(project)
    return [f"{preset.name}: {problem}" for problem in _manifest_problems(preset) + problems]


def _trigger_problems(catalog: Catalog) -> list[str]:
    owners: dict[str, set[str]] = {}
    for preset in catalog.presets:
        for trigger in preset.triggers:
            owners.setdefault(normalise(trigger), set()).add(preset.name)
    problems = [
        f"trigger {trigger!r} is shared by presets {', '.join(sorted(names))}"
        for trigger, names in owners.items()
        if len(names) > 1
    ]
    matcher = Matcher(catalog.presets)
    for preset in catalog.presets:
        for trigger in preset.triggers:
            found = matcher.match(trigger)
            if found.method != "exact" or found.name != preset.name:
                problems.append(f"{preset.name}: trigger {trigger!r} does not select it exactly (got {found.method})")
    return problems


def _duplicate_names(catalog: Catalog) -> list[str]:
    seen: set[str] = set()
    problems: list[str] = []
    for preset in catalog.presets:
        if preset.name in seen:
            problems.append(f"{preset.name}: more than one preset has this name")
        seen.add(preset.name)
    return problems


def check_catalog(root: Path) -> list[str]:
    """Load errors, every preset's problems, and conflicts between presets; empty when all is fine."""
    catalog = load_catalog(root)
    problems = list(catalog.errors) + _duplicate_names(catalog)
    for preset in catalog.presets:
        problems += check_preset(preset)
    return problems + _trigger_problems(catalog)
