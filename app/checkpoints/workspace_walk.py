"""The files a checkpoint holds: a walk of the workspace, not ``git add -A``, so the workspace's own
``.gitignore`` and planted nested repositories cannot change what is committed."""

from __future__ import annotations

import builtins
import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["EXCLUDE", "nul_joined", "workspace_files"]

# Never committed, never removed by a restore. The walk below and info/exclude (read by
# ``git clean``) must agree, so both come from these names.
_IGNORED_DIRS = frozenset({b"node_modules", b"dist"})
_BUILD_DIR_PREFIX = b".runforge-build-"
EXCLUDE = "node_modules/\ndist/\n.runforge-build-*/\n.[Gg][Ii][Tt]\n"


def _skipped_dir(name: bytes) -> bool:
    return name in _IGNORED_DIRS or name.startswith(_BUILD_DIR_PREFIX) or name.lower() == b".git"


def _skipped_file(name: bytes, is_symlink: bool) -> bool:
    # Git refuses these in an index (bytes.lower() is ASCII-only, like git's own check).
    lowered = name.lower()
    return lowered == b".git" or (is_symlink and lowered == b".gitmodules")


def workspace_files(workspace: Path) -> set[bytes]:
    """Every path a checkpoint holds, relative and "/"-separated (bytes: names need not be UTF-8)."""
    root = os.fsencode(workspace)
    found: set[bytes] = set()
    pending = [b""]
    while pending:
        rel = pending.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as entries:
            for entry in entries:
                _visit(entry, rel + b"/" + entry.name if rel else entry.name, found, pending)
    return found


def _visit(entry: os.DirEntry[bytes], path: bytes, found: set[bytes], pending: builtins.list[bytes]) -> None:
    if entry.is_symlink():  # recorded as a link, never followed
        if not _skipped_file(entry.name, is_symlink=True):
            found.add(path)
    elif entry.is_dir():
        if not _skipped_dir(entry.name):
            pending.append(path)
    elif entry.is_file() and not _skipped_file(entry.name, is_symlink=False):
        found.add(path)
    # Sockets, FIFOs and devices cannot be stored in git: skipped.


def nul_joined(paths: Iterable[bytes]) -> bytes:
    return b"".join(path + b"\0" for path in paths)
