"""The data directory and the database are the server's alone: ``0700`` and ``0600``.

So that on a shared host, even with a sandbox misconfigured, no other local user can read every
app, the prompts and answers, the token hashes or the preview-link secret. Existing ones that are
wider are narrowed (and logged): a data directory made by an older Runforge, or by hand.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` (and missing parents) as ``0700``, or narrow it to that (blocking)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _narrow(path, DIR_MODE)


def make_private_file(path: Path) -> None:
    """Create ``path`` empty as ``0600`` unless it exists, or narrow it to that (blocking).

    SQLite gives its -wal and -shm files the database file's mode, so they are private too.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE))
    _narrow(path, FILE_MODE)


def _narrow(path: Path, mode: int) -> None:
    current = stat.S_IMODE(path.stat().st_mode)
    if current & ~mode:
        path.chmod(mode)
        log.info("narrowed %s from %o to %o: only the server may read it", path, current, mode)
