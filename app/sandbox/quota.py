"""The write limit: how much a step may grow its workspace, checked by polling its disk usage.

No rlimit bounds the bytes a step writes in all (RLIMIT_FSIZE bounds one file), and the workspace
is a folder of the server's disk, not a filesystem of its own. So the workspace's usage is
measured when the step starts and then every half second or so (further apart when a walk is
slow, so the watchdog takes at most ~20 % of a core); past ``limit`` bytes of growth the step is
killed. A step can overshoot by what it writes between two polls: docs/design.md gives the bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import stat
import time
from collections.abc import Callable
from pathlib import Path

_MIN_INTERVAL_S = 0.5
_WALK_SHARE = 0.2  # of the time between polls, at most, spent walking


async def watch_growth(workspace: Path, limit: int, exceeded: Callable[[], None]) -> None:
    """Call ``exceeded`` once the workspace has grown by more than ``limit`` bytes; runs until cancelled."""
    baseline = await asyncio.to_thread(disk_usage, workspace, None)
    while True:
        started = time.monotonic()
        used = await asyncio.to_thread(disk_usage, workspace, baseline + limit)
        if used > baseline + limit:
            exceeded()
            return
        walk_s = time.monotonic() - started
        await asyncio.sleep(max(_MIN_INTERVAL_S, walk_s / _WALK_SHARE))


def tree_paths(root: Path) -> set[str]:
    """Every path under ``root`` (symlinks not followed), to tell afterwards what a step added."""
    found: set[str] = set()
    pending = [str(root)]
    while pending:
        directory = pending.pop()
        for entry in _entries(directory):
            found.add(entry.path)
            if entry.is_dir(follow_symlinks=False):
                pending.append(entry.path)
    return found


def remove_added(root: Path, before: set[str]) -> None:
    """Remove what was made under ``root`` since ``before`` was taken: a step's writes past its limit."""
    for path in sorted(tree_paths(root) - before, key=len, reverse=True):  # children before parents
        with contextlib.suppress(OSError):
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            else:
                os.unlink(path)


def disk_usage(root: Path, stop_above: int | None) -> int:
    """Bytes of disk the tree under ``root`` uses (symlinks not followed), or the first sum past ``stop_above``."""
    total = 0
    pending = [str(root)]
    while pending:
        total += _scan(pending.pop(), pending)
        if stop_above is not None and total > stop_above:
            break
    return total


def _scan(directory: str, pending: list[str]) -> int:
    """Bytes of the entries of one directory; its subdirectories go on ``pending``."""
    total = 0
    for entry in _entries(directory):
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        total += info.st_blocks * 512
        if stat.S_ISDIR(info.st_mode):
            pending.append(entry.path)
    return total


def _entries(directory: str) -> list[os.DirEntry[str]]:
    try:
        return list(os.scandir(directory))
    except OSError:
        return []  # removed meanwhile, or unreadable: the next poll sees what is there then
