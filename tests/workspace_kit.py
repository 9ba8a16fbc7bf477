"""Shared by the workspace and tool tests: the path-escape corpus, its workspace, a racing gate."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from app.control.cancel import StopGate, StopReason
from app.workspace.fs import CORE_FILES

# Hostile paths that need no special filesystem layout.
LEXICAL_HOSTILE = [
    "",
    "..",
    "../",
    "../x",
    "../../x",
    "./../x",
    "a/../../x",
    "a/../x",
    "a/b/../../../x",
    "x/..",
    "/etc/passwd",
    "/",
    "//x",
    "C:\\x",
    "C:x",
    "c:/x",
    "\\\\server\\share",
    "\\\\?\\C:\\x",
    "a\\b",
    "..\\x",
    "a\x00b",
    "\x00",
    "a\nb",
    "a\rb",
    "\x7f",
    "a\u202eb",
    "%2e%2e%2fx",
    "%2e%2e/x",
    "..%2fx",
    "%2E%2E%2Fx",
    "a%5cb",
    "%252e%252e%252fx",
    "x" * 256,
    "é" * 128,  # 256 bytes in UTF-8
    "a/" * 600,
    "\udcff",
    # Forms that aim at a sibling of the workspace, as a model would.
    "../sibling/new.txt",
    "..\\sibling\\x",
    "\x1b[31m",
    "%2e%2e%2fsibling",
    "%2e%2e/sibling/x",
    "..%2fsibling",
]
# Paths that are lexically fine but reach outside through symlinks planted by `make_workspace`.
SYMLINK_HOSTILE = [
    "out_file",
    "out_dir",
    "out_dir/secret.txt",
    "out_dir/new.txt",
    "out_dir/deeper/new.txt",
    "sub/esc/secret.txt",
    "sub/esc/new.txt",
    "dangling",
    "up/outside/secret.txt",
    "up/sibling/new.txt",
    "sub/esc/new/deep.txt",
]
HOSTILE = LEXICAL_HOSTILE + SYMLINK_HOSTILE


def make_workspace(base: Path) -> Path:
    """ws/ with a small Vue project and symlinks pointing out to base/outside and base/sibling."""
    ws, outside = base / "ws", base / "outside"
    (ws / "src").mkdir(parents=True)
    (ws / "sub").mkdir()
    outside.mkdir()
    (base / "sibling").mkdir()
    (outside / "secret.txt").write_text("top secret")
    for core in CORE_FILES:
        (ws / core).write_text(f"core {core}\n")
    (ws / "out_file").symlink_to(outside / "secret.txt")
    (ws / "out_dir").symlink_to("../outside")
    (ws / "sub" / "esc").symlink_to(outside)
    (ws / "dangling").symlink_to(outside / "created.txt")
    (ws / "up").symlink_to("..")
    (ws / "srclink").symlink_to("src")  # inside -> inside: allowed
    return ws


class ClosingGate(StopGate):
    """A gate that gets stopped right before a commit: the stop races the final rename."""

    def __init__(self) -> None:
        super().__init__()
        self.seen_at_commit: list[str] = []
        self.directory: Path | None = None

    @contextlib.contextmanager
    def commit(self) -> Iterator[None]:
        if self.directory is not None:
            self.seen_at_commit = sorted(os.listdir(self.directory))
        self.close(StopReason.USER_STOP)
        with super().commit():
            yield
