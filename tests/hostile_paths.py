"""The path-escape corpus shared by the workspace and tool tests, and the workspace it needs."""

from __future__ import annotations

from pathlib import Path

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
