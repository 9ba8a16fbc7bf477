"""Publishing a finished build as the app's ``dist/``, and removing what a stopped build left.

The live ``dist/`` is only ever replaced by a rename, so the preview serves the previous or the new
complete build, never a mix.
"""

from __future__ import annotations

import secrets
import shutil
from pathlib import Path

__all__ = ["BUILD_DIR_PREFIX", "discard_build", "publish_build", "remove_path"]

BUILD_DIR_PREFIX = ".runforge-build-"  # temp out dirs, and the old dist while a publish swaps it out


def publish_build(workspace: Path, out_dir: Path) -> None:
    """Swap ``out_dir`` in as ``workspace/dist`` (blocking: run it in a thread).

    A rename cannot replace a non-empty directory, so the old dist is renamed away first and
    deleted only once the new build has its name: ``dist/`` is the previous or the new complete
    build, never a mix (between the two renames it is absent for a moment).
    """
    dist = workspace / "dist"
    old = workspace / f"{BUILD_DIR_PREFIX}replaced-{secrets.token_hex(8)}"
    had_dist = _rename_if_present(dist, old)
    try:
        out_dir.rename(dist)
    except OSError:
        if had_dist:
            old.rename(dist)  # keep serving the previous build
        raise
    if had_dist:
        remove_path(old)


def discard_build(workspace: Path) -> None:
    """Remove temp build dirs a stopped or crashed run left behind (blocking: run it in a thread)."""
    for path in workspace.glob(f"{BUILD_DIR_PREFIX}*"):
        remove_path(path)


def _rename_if_present(source: Path, target: Path) -> bool:
    try:
        source.rename(target)
    except FileNotFoundError:
        return False
    return True


def remove_path(path: Path) -> None:
    """Best effort: what is left is removed by the next :func:`discard_build`."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path, ignore_errors=True)
