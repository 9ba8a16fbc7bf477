"""What an install may fetch: registry packages only, never a URL, a git repository or a local path.

The install is the one sandboxed step with network (it runs npm, and no package's scripts), and
the model writes its inputs. So before npm starts, the project's package.json and lockfile are
checked: a dependency given as ``http://127.0.0.1:6379/``, ``git+ssh://...``, ``file:../..`` or a
GitHub shorthand would make npm itself connect to, or read from, somewhere the sandbox is meant
to keep the build away from. A project ``.npmrc`` is refused too: it can name another registry,
a proxy or a CA, and the server's npm settings are the ones that apply.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

DEFAULT_REGISTRY = "https://registry.npmjs.org/"
_SPEC_FIELDS = ("dependencies", "devDependencies", "optionalDependencies", "peerDependencies")
_ALIAS = "npm:"


class DependencyRefused(ValueError):
    """The project asks the install for something other than registry packages."""


def check_install_inputs(workspace: Path, registry: str) -> None:
    """Raise :class:`DependencyRefused` naming the first thing the install may not fetch (blocking)."""
    if (workspace / ".npmrc").exists():
        raise DependencyRefused("the project has an .npmrc; installs use the server's npm settings: remove it")
    package = _json_object(workspace / "package.json")
    for name, spec in _package_specs(package or {}):
        if not _registry_spec(spec):
            raise DependencyRefused(f"dependency {name!r} is {spec!r}: only registry versions can be installed")
    lock = _json_object(workspace / "package-lock.json")
    allowed = tuple(dict.fromkeys([_with_slash(registry), DEFAULT_REGISTRY]))
    for where, resolved in _lock_sources(lock or {}):
        if not resolved.startswith(allowed):
            raise DependencyRefused(f"package-lock.json resolves {where!r} to {resolved!r}, not the registry")


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return None
    except RecursionError:  # json's refusal of a file nested deeper than it can recurse
        raise DependencyRefused(f"{path.name} is nested too deeply to read") from None
    if not isinstance(value, dict):
        raise DependencyRefused(f"{path.name} is not a JSON object")
    return value


def _package_specs(package: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    for field in _SPEC_FIELDS:
        yield from _items(package.get(field))
    yield from _override_specs(package.get("overrides"))


def _override_specs(overrides: Any) -> Iterator[tuple[str, Any]]:
    """npm's overrides nest: {"a": {"b": "1.0.0", ".": "2.0.0"}}."""
    for name, value in _items(overrides):
        if isinstance(value, dict):
            yield from _override_specs(value)
        else:
            yield name, value


def _items(value: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(value, dict):
        yield from value.items()
    elif value is not None:
        yield "?", value


def _registry_spec(spec: Any) -> bool:
    """A semver range, a tag, or an npm: alias of one. URLs, paths, git and owner/repo all hold ':' or '/'."""
    if not isinstance(spec, str):
        return False
    if spec.startswith(_ALIAS):
        name, at, rest = spec[len(_ALIAS) :].lstrip("@").partition("@")
        return bool(name) and _registry_spec(rest if at else "")
    return ":" not in spec and "/" not in spec and "\\" not in spec


def _lock_sources(lock: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """Every place a lockfile (v1 to v3) sends npm: ``resolved`` URLs and links to local folders."""
    for section in ("packages", "dependencies"):
        entries = lock.get(section)
        if isinstance(entries, dict):
            yield from _entry_sources(entries)


def _entry_sources(entries: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for where, entry in entries.items():
        if not isinstance(entry, dict) or where == "":
            continue  # "" is the project itself
        if entry.get("link"):
            yield where, f"a link to {entry.get('resolved')!r}"
        resolved = entry.get("resolved")
        if resolved is not None:
            yield where, str(resolved)
        nested = entry.get("dependencies")
        if isinstance(nested, dict) and _section_is_v1(nested):
            yield from _entry_sources(nested)


def _section_is_v1(nested: dict[str, Any]) -> bool:
    """A v1 lockfile nests entries (objects); a v2+ ``packages`` entry lists ranges (strings)."""
    return any(isinstance(value, dict) for value in nested.values())


def _with_slash(url: str) -> str:
    return url if url.endswith("/") else url + "/"
