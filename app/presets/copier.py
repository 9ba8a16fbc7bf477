"""Copying a preset's project into a workspace: all of it or nothing, and never after a stop.

Blocking (callers run it in a worker thread). The copy never writes into the workspace itself:
files go to a hidden temp directory beside it (same filesystem), and one ``os.rename`` inside
``with gate.commit():`` turns that directory into the workspace. A stop before the commit leaves
the workspace untouched; a stop after it finds the complete preset. On Linux, ``rename`` onto an
*empty* directory replaces it atomically, so there is no moment without a workspace directory.

Only an empty (or missing) workspace is seeded: a preset must never overwrite a user's files.
"""

from __future__ import annotations

import os
import secrets
import shutil
import stat
from pathlib import Path

from app.control.cancel import StopGate
from app.presets.manifest import Preset, PresetError
from app.workspace.fs import SKIP_DIRS

__all__ = ["copy_preset", "workspace_is_empty"]

_TEMP_TOKEN_BYTES = 8  # 16 hex digits: the same shape as app.workspace.fs temp names
_TEMP_STEM_BYTES = 200  # keep the temp name under the 255-byte limit


def workspace_is_empty(workspace: Path) -> bool:
    """True if ``workspace`` is missing or an empty directory (a file or a symlink is not empty)."""
    try:
        mode = os.lstat(workspace).st_mode
    except FileNotFoundError:
        return True
    if not stat.S_ISDIR(mode):
        return False
    with os.scandir(workspace) as entries:
        return next(entries, None) is None


def _nearest_existing_dir(path: Path) -> Path:
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _temp_dir_path(workspace: Path) -> Path:
    # Beside the workspace when its parent exists, so the final rename stays on one filesystem;
    # otherwise in the nearest existing ancestor, so a refused commit creates no directories.
    stem = workspace.name.encode("utf-8")[:_TEMP_STEM_BYTES].decode("utf-8", errors="ignore")
    token = secrets.token_hex(_TEMP_TOKEN_BYTES)
    return _nearest_existing_dir(workspace.parent) / f".{stem}.preset.{token}.tmp"


def _copy_file(source: Path, target: Path) -> None:
    """Copy one regular file's bytes and permission bits, fsynced like every workspace write."""
    mode = stat.S_IMODE(os.stat(source, follow_symlinks=False).st_mode)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(source, "rb") as reader, os.fdopen(os.open(target, flags, mode), "wb") as writer:
        shutil.copyfileobj(reader, writer)
        writer.flush()
        os.fsync(writer.fileno())


def _copy_tree(source: Path, target: Path, gate: StopGate) -> None:
    """Copy directories and regular files; skip build/VCS dirs, symlinks and special files."""
    stack = [(source, target)]
    while stack:
        from_dir, to_dir = stack.pop()
        with os.scandir(from_dir) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
        for entry in entries:
            if entry.name in SKIP_DIRS or entry.is_symlink():
                continue
            if entry.is_dir(follow_symlinks=False):
                os.mkdir(to_dir / entry.name)
                stack.append((Path(entry.path), to_dir / entry.name))
            elif entry.is_file(follow_symlinks=False):
                gate.check()  # a stopped run stops copying at the next file
                _copy_file(Path(entry.path), to_dir / entry.name)


def _commit(temp: Path, workspace: Path, gate: StopGate) -> bool:
    with gate.commit():
        # Something may have been written while we copied; a preset never overwrites it.
        if not workspace_is_empty(workspace):
            return False
        workspace.parent.mkdir(parents=True, exist_ok=True)
        os.rename(temp, workspace)  # replaces an empty directory atomically
    return True


def _copy_error(preset: Preset, exc: OSError) -> PresetError:
    # strerror only: str(exc) carries absolute host paths.
    return PresetError(f"cannot copy preset {preset.name}: {exc.strerror or type(exc).__name__}")


def copy_preset(preset: Preset, workspace: Path, gate: StopGate) -> bool:
    """Seed an empty or missing ``workspace`` with ``preset``; False (nothing touched) if not empty.

    Raises :class:`RunCancelled` if the run is stopped (the workspace is then untouched) and
    :class:`PresetError` if the copy fails. No temp directory survives either.
    """
    if not workspace_is_empty(workspace):
        return False
    source = preset.project_dir
    if not source.is_dir():
        raise PresetError(f"preset {preset.name} has no {source.name}/ directory")
    gate.check()  # a stopped run should not even create the temp directory
    temp = _temp_dir_path(workspace)
    try:
        os.mkdir(temp)
    except OSError as exc:
        raise _copy_error(preset, exc) from exc
    try:
        _copy_tree(source, temp, gate)
        return _commit(temp, workspace, gate)
    except OSError as exc:
        raise _copy_error(preset, exc) from exc
    finally:
        # Also on RunCancelled. After a successful rename the temp path is gone and this does nothing.
        shutil.rmtree(temp, ignore_errors=True)
