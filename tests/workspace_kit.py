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
    # More ".." forms, and what lenient decoders turn into them.
    "a/./../../x",
    "a//..//../x",
    "./../sibling/x",
    "../ws/../outside/secret.txt",
    "%2e./x",
    ".%2e/x",
    "%2e%2e",
    "%5c..%5cx",
    "%252e%252e%255cx",
    "%c0%ae%c0%ae/x",  # overlong UTF-8 "."
    "%c0%afetc",  # overlong UTF-8 "/"
    "%e0%80%ae%e0%80%ae/x",
    "%u002e%u002e/x",  # IIS-style
    "%ef%bc%8e%ef%bc%8e%ef%bc%8fx",  # URL-encoded fullwidth "../"
    # Absolute and drive forms.
    "/etc/../etc/passwd",
    "///etc/passwd",
    "D:/x",
    "z:",
    "\\x",
    # Over-long: a 256-byte name of 4-byte characters, a path over 1024 characters.
    "\U0001f600" * 64,
    "src/" + "y" * 256,
    "d/" * 512 + "x",
]
# Unicode look-alikes of ".", "/" and "\\" (literal names on POSIX, traversal for anything that
# applies NFKC, or misleading to read).
UNICODE_HOSTILE = [
    "\uff0e\uff0e/x",  # FULLWIDTH FULL STOP x2
    "\uff0e\uff0e\uff0fx",  # ... and FULLWIDTH SOLIDUS
    "a/\uff0e\uff0e/../x",
    "\uff0e\uff0e/sibling/new.txt",
    "\u2024\u2024/x",  # ONE DOT LEADER x2
    "\u2025/x",  # TWO DOT LEADER
    "\ufe30/x",  # VERTICAL TWO DOT LEADER
    "\ufe52\ufe52/x",  # SMALL FULL STOP x2
    "\uff0e",
    "..\u2215x",  # DIVISION SLASH
    "\u2215etc\u2215passwd",
    "..\u2044x",  # FRACTION SLASH
    "..\u29f8x",  # BIG SOLIDUS
    "..\uff3cx",  # FULLWIDTH REVERSE SOLIDUS
    "..\ufe68x",  # SMALL REVERSE SOLIDUS
    "..\u2216x",  # SET MINUS
    "a\u2100b",  # ACCOUNT OF: NFKC "a/c"
    "\uff23\uff1a/x",  # FULLWIDTH "C:"
    "a\u2066b",  # a bidi isolate
    "a\u2028b",  # LINE SEPARATOR
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
# Regular files that share their inode with a file outside (hard links planted by `make_workspace`).
HARDLINK_HOSTILE = [
    "hardlink_out",
    "sub/hardlink_out",
    "up/ws/hardlink_out",  # through a symlink that goes out and comes back in
    "./sub//hardlink_out",
]
HOSTILE = LEXICAL_HOSTILE + UNICODE_HOSTILE + SYMLINK_HOSTILE + HARDLINK_HOSTILE
CATEGORIES = {
    "lexical": LEXICAL_HOSTILE,
    "unicode": UNICODE_HOSTILE,
    "symlink": SYMLINK_HOSTILE,
    "hardlink": HARDLINK_HOSTILE,
}


def make_workspace(base: Path, name: str = "ws") -> Path:
    """base/<name> with a small Vue project, and symlinks and hard links pointing out to
    base/outside and base/sibling."""
    ws, outside = base / name, base / "outside"
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
    os.link(outside / "secret.txt", ws / "hardlink_out")
    os.link(outside / "secret.txt", ws / "sub" / "hardlink_out")
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
