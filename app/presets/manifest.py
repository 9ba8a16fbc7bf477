"""Preset manifests: ``templates/<name>/template.toml`` plus the files in ``templates/<name>/project/``.

A preset is a small starter project that a run can copy into an empty workspace before the
agent starts, so the model edits a known-good scaffold instead of writing one from nothing.
The manifest is strict (unknown keys and wrong types are errors) because a typo such as
``trigger = ...`` would otherwise silently disable a preset. :func:`load_catalog` never raises:
one broken preset must not take the others (or the server) down with it.
"""

from __future__ import annotations

import logging
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "CODE_GEN_TYPES",
    "MANIFEST_FILE",
    "PROJECT_DIR",
    "Catalog",
    "Preset",
    "PresetError",
    "load_catalog",
    "load_preset",
]

MANIFEST_FILE = "template.toml"
PROJECT_DIR = "project"
CODE_GEN_TYPES = frozenset({"html", "multi_file", "vue_project"})
_NAME = re.compile(r"[a-z0-9_-]+")
_STRING_KEYS = ("name", "title", "description", "codeGenType", "instruction")
_LIST_KEYS = ("triggers", "keywords")
_KEYS = frozenset(_STRING_KEYS + _LIST_KEYS)

logger = logging.getLogger("app.presets")


class PresetError(Exception):
    """A preset cannot be used: bad manifest, missing directory, or a failed copy."""


@dataclass(frozen=True, slots=True)
class Preset:
    name: str
    title: str
    description: str
    code_gen_type: str
    triggers: tuple[str, ...]  # exact quick-start prompts, as written in the manifest
    keywords: tuple[str, ...]
    instruction: str  # extra guidance for the agent when it starts from this preset
    directory: Path  # templates/<name>

    @property
    def project_dir(self) -> Path:
        return self.directory / PROJECT_DIR


@dataclass(frozen=True, slots=True)
class Catalog:
    presets: tuple[Preset, ...]  # sorted by name
    errors: tuple[str, ...]  # one line per preset that could not be loaded

    def get(self, name: str) -> Preset | None:
        return next((preset for preset in self.presets if preset.name == name), None)

    def for_type(self, code_gen_type: str) -> tuple[Preset, ...]:
        return tuple(preset for preset in self.presets if preset.code_gen_type == code_gen_type)


# --- manifest parsing ------------------------------------------------------------------------


def _read_manifest(directory: Path) -> dict[str, Any]:
    path = directory / MANIFEST_FILE
    try:
        with open(path, "rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise PresetError(f"{directory.name}: no {MANIFEST_FILE}") from None
    except OSError as exc:
        raise PresetError(f"{directory.name}: cannot read {MANIFEST_FILE}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise PresetError(f"{directory.name}: {MANIFEST_FILE} is not valid TOML: {exc}") from None


def _check_keys(data: dict[str, Any], where: str) -> None:
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise PresetError(f"{where}: unknown keys: {', '.join(unknown)}")
    missing = sorted(_KEYS - set(data))
    if missing:
        raise PresetError(f"{where}: missing keys: {', '.join(missing)}")


def _string(data: dict[str, Any], key: str, where: str) -> str:
    value = data[key]
    if not isinstance(value, str):
        raise PresetError(f"{where}: {key} must be a string")
    return value


def _strings(data: dict[str, Any], key: str, where: str) -> tuple[str, ...]:
    value = data[key]
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise PresetError(f"{where}: {key} must be a list of non-empty strings")
    return tuple(value)


def _validate_identity(name: str, code_gen_type: str, directory: Path, where: str) -> None:
    if _NAME.fullmatch(name) is None:
        raise PresetError(f"{where}: name {name!r} must match [a-z0-9_-]+")
    # The directory name is how presets are addressed on disk; a mismatch means a copy-paste.
    if name != directory.name:
        raise PresetError(f"{where}: name {name!r} differs from its directory name {directory.name!r}")
    if code_gen_type not in CODE_GEN_TYPES:
        choices = ", ".join(sorted(CODE_GEN_TYPES))
        raise PresetError(f"{where}: codeGenType {code_gen_type!r} must be one of {choices}")


def load_preset(directory: Path) -> Preset:
    """Parse and validate ``directory/template.toml``; raise :class:`PresetError` saying what is wrong."""
    where = f"{directory.name}/{MANIFEST_FILE}"
    data = _read_manifest(directory)
    _check_keys(data, where)
    name = _string(data, "name", where)
    code_gen_type = _string(data, "codeGenType", where)
    _validate_identity(name, code_gen_type, directory, where)
    triggers = _strings(data, "triggers", where)
    if not triggers:
        raise PresetError(f"{where}: triggers must not be empty")
    # A preset without files would "succeed" by copying nothing; refuse it at load time.
    project = directory / PROJECT_DIR
    if project.is_symlink() or not project.is_dir():
        raise PresetError(f"{directory.name}: {PROJECT_DIR}/ is missing or not a directory")
    return Preset(
        name=name,
        title=_string(data, "title", where),
        description=_string(data, "description", where),
        code_gen_type=code_gen_type,
        triggers=triggers,
        keywords=_strings(data, "keywords", where),
        instruction=_string(data, "instruction", where),
        directory=directory,
    )


# --- catalog ---------------------------------------------------------------------------------


def _preset_dirs(root: Path) -> list[Path]:
    # Hidden entries (.gitkeep, editor folders) and loose files are not presets.
    candidates = [entry for entry in root.iterdir() if not entry.name.startswith(".") and entry.is_dir()]
    return sorted(candidates, key=lambda path: path.name)


def load_catalog(root: Path) -> Catalog:
    """Every preset under ``root``, sorted by name. Never raises: problems are logged and listed."""
    try:
        directories = _preset_dirs(root)
    except OSError as exc:
        message = f"cannot read templates directory {root}: {exc.strerror}"
        logger.warning("%s", message)
        return Catalog(presets=(), errors=(message,))
    presets: list[Preset] = []
    errors: list[str] = []
    for directory in directories:
        try:
            presets.append(load_preset(directory))
        except PresetError as exc:
            logger.warning("skipping preset: %s", exc)
            errors.append(str(exc))
    return Catalog(presets=tuple(presets), errors=tuple(errors))
