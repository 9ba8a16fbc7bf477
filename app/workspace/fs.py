"""Synchronous, workspace-confined file operations.

These block, so callers run them through ``asyncio.to_thread``. Every user path goes through
:func:`resolve_in_workspace`; every side effect (``mkdir``, ``os.replace``, ``unlink``) happens
inside ``with gate.commit():`` so that nothing lands once the run has been stopped.

Writes are atomic: content goes to a temp file in the target's directory (same filesystem, so
the rename is atomic), is fsynced, and only then renamed over the target. A reader therefore
sees either the old file or the complete new one, never a torn write. Renaming also replaces a
hard link instead of writing into its shared inode.
"""

from __future__ import annotations

import codecs
import contextlib
import heapq
import os
import re
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from app.control.cancel import StopGate
from app.workspace.paths import (
    PathRefused,
    WorkspaceError,
    relative_display,
    resolve_in_workspace,
    workspace_root,
)

__all__ = [
    "CORE_FILES",
    "MAX_DIR_ENTRIES",
    "MAX_READ_BYTES",
    "MAX_TREE_ENTRIES",
    "MAX_WRITE_BYTES",
    "SKIP_DIRS",
    "DirEntry",
    "EntryKind",
    "PathRefused",
    "TreeEntry",
    "WorkspaceError",
    "delete_file",
    "is_temp_name",
    "list_dir",
    "modify_text_atomic",
    "read_text",
    "tree",
    "write_text_atomic",
]

MAX_WRITE_BYTES = 1024 * 1024
MAX_READ_BYTES = 200_000
MAX_DIR_ENTRIES = 1000
MAX_TREE_ENTRIES = 5000
SKIP_DIRS = frozenset({"node_modules", ".git", "dist"})
# The scaffold the app cannot run without; the model may rewrite them but never delete them.
CORE_FILES = frozenset(
    {
        "package.json",
        "index.html",
        "vite.config.js",
        "vite.config.ts",
        "src/main.js",
        "src/main.ts",
        "src/App.vue",
    }
)
# Case-folded too: on a case-insensitive filesystem "Package.json" is the same file.
_CORE_FOLDED = frozenset(name.casefold() for name in CORE_FILES)
# Top-level paths the tools may read but never write or delete (see _check_managed).
MANAGED_DIRS = frozenset({"dist", "node_modules", ".git"})
MANAGED_PREFIX = ".runforge-"
_MANAGED_FOLDED = frozenset(name.casefold() for name in MANAGED_DIRS)
_TEMP_TOKEN_BYTES = 8  # secrets.token_hex(8) -> 16 hex digits, matched below
_TEMP_NAME = re.compile(r"\..*\.[0-9a-f]{16}\.tmp", re.DOTALL)
# Keep "." + stem + "." + token + ".tmp" under the 255-byte name limit.
_TEMP_STEM_BYTES = 200

EntryKind = Literal["file", "dir", "symlink", "other"]


@dataclass(frozen=True, slots=True)
class DirEntry:
    name: str
    kind: EntryKind
    size: int  # bytes for files, 0 otherwise


@dataclass(frozen=True, slots=True)
class TreeEntry:
    path: str  # relative to the workspace root, POSIX form
    kind: EntryKind
    size: int


def is_temp_name(name: str) -> bool:
    """True for the temp files :func:`write_text_atomic` creates (hidden from :func:`tree`)."""
    return _TEMP_NAME.fullmatch(name) is not None


# --- helpers ---------------------------------------------------------------------------------


def _stat_existing(target: Path, shown: str, what: str) -> os.stat_result:
    try:
        return os.stat(target)
    except (FileNotFoundError, NotADirectoryError):
        raise WorkspaceError(f"no such {what}: {shown}") from None


def _regular_file_size(target: Path, shown: str) -> int:
    st = _stat_existing(target, shown, "file")
    if stat.S_ISDIR(st.st_mode):
        raise WorkspaceError(f"{shown} is a directory; use list_dir to see its contents")
    # FIFOs and devices would block or never end; there is no reason to read them.
    if not stat.S_ISREG(st.st_mode):
        raise WorkspaceError(f"{shown} is not a regular file")
    return st.st_size


def _require_dir(target: Path, shown: str) -> None:
    st = _stat_existing(target, shown, "directory")
    if not stat.S_ISDIR(st.st_mode):
        raise WorkspaceError(f"{shown} is not a directory; use read_file to read a file")


def _kind_and_size(entry: os.DirEntry[str]) -> tuple[EntryKind, int]:
    # follow_symlinks=False everywhere: a link is reported as a link, never entered.
    if entry.is_symlink():
        return "symlink", 0
    if entry.is_dir(follow_symlinks=False):
        return "dir", 0
    if entry.is_file(follow_symlinks=False):
        try:
            return "file", entry.stat(follow_symlinks=False).st_size
        except FileNotFoundError:  # deleted while listing (a dev server may do that)
            return "file", 0
    return "other", 0


def _encode_content(content: str) -> bytes:
    try:
        data = content.encode("utf-8")
    except UnicodeEncodeError:
        raise WorkspaceError("content is not valid UTF-8 text (it contains lone surrogates)") from None
    if len(data) > MAX_WRITE_BYTES:
        raise WorkspaceError(
            f"content is too large: {len(data)} bytes (limit {MAX_WRITE_BYTES} bytes); split it into smaller files"
        )
    return data


def _check_managed(shown: str) -> None:
    """Build output, dependencies and Runforge's own files are made by Runforge, not the model:
    a page written into dist/ would be served as the build, and would outlive a rollback
    (checkpoints never hold these paths)."""
    top = shown.split("/", 1)[0].casefold()
    if top in _MANAGED_FOLDED or top.startswith(MANAGED_PREFIX):
        raise WorkspaceError(f"{shown} is managed by Runforge (build output, dependencies); write the sources instead")


def _check_write_target(target: Path, shown: str) -> None:
    _check_managed(shown)
    if os.path.islink(target):
        raise WorkspaceError(f"refusing to write through a symlink: {shown}")
    if os.path.isdir(target):
        raise WorkspaceError(f"{shown} is a directory; give a file path")


def printable_name(name: str) -> str:
    """A file name as valid UTF-8 text (JSON and the model's next request need it).

    Names that are not UTF-8 on disk arrive with surrogate escapes; show them with U+FFFD.
    """
    return os.fsencode(name).decode("utf-8", errors="replace")


def _make_parent(parent: Path, shown: str) -> None:
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise WorkspaceError(f"cannot create {shown}: a parent path is a file, not a directory") from None


def _nearest_existing_dir(path: Path) -> Path:
    # Within the workspace (resolve_in_workspace checked the whole path), so same filesystem.
    while not path.is_dir() and path != path.parent:
        path = path.parent
    return path


def _temp_path(target: Path, directory: Path) -> Path:
    stem = target.name.encode("utf-8")[:_TEMP_STEM_BYTES].decode("utf-8", errors="ignore")
    return directory / f".{stem}.{secrets.token_hex(_TEMP_TOKEN_BYTES)}.tmp"


def _existing_mode(target: Path) -> int | None:
    try:
        return stat.S_IMODE(os.stat(target).st_mode)
    except (FileNotFoundError, NotADirectoryError):  # new file; a file-as-parent fails at the commit
        return None


def _replace_atomically(target: Path, data: bytes, gate: StopGate, shown: str) -> None:
    """Temp file, fsync, then ONE gated commit: missing parent dirs and the rename land together.

    The temp file is staged in the nearest directory that already exists, so a stop that
    refuses the commit leaves no trace at all, not even an empty new directory.
    """
    tmp = _temp_path(target, _nearest_existing_dir(target.parent))
    # O_EXCL|O_NOFOLLOW: never reuse or follow something already sitting at the temp name.
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            mode = _existing_mode(target)
            if mode is not None:  # an overwrite keeps the file's permissions
                os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        with gate.commit():
            _make_parent(target.parent, shown)
            os.replace(tmp, target)
    except BaseException:
        # Also on RunCancelled: a stopped run leaves no trace, not even a temp file.
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _count_occurrences(haystack: str, needle: str) -> int:
    # Overlapping matches count: "aa" in "aaa" is ambiguous, str.count would say 1.
    count, start = 0, haystack.find(needle)
    while start != -1:
        count += 1
        start = haystack.find(needle, start + 1)
    return count


def _read_utf8_strict(target: Path, shown: str) -> str:
    try:
        return target.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise WorkspaceError(f"{shown} is not valid UTF-8 text; rewrite it with write_file") from None


def _is_core_file(root: Path, target: Path) -> bool:
    # Check the parent's real path too: "srclink/main.js" with srclink -> src is src/main.js.
    real = Path(os.path.realpath(target.parent)) / target.name
    names = {relative_display(root, target), relative_display(root, real)}
    return any(name.casefold() in _CORE_FOLDED for name in names)


# --- public API ------------------------------------------------------------------------------


def write_text_atomic(root: Path, path: str, content: str, gate: StopGate) -> int:
    """Atomically create or replace ``path`` with ``content``; return the bytes written."""
    target = resolve_in_workspace(root, path)
    shown = relative_display(root, target)
    data = _encode_content(content)
    _check_write_target(target, shown)
    gate.check()  # a stopped run should not even create a temp file
    _replace_atomically(target, data, gate, shown)
    return len(data)


def read_text(root: Path, path: str, limit: int = MAX_READ_BYTES) -> str:
    """Read a text file as UTF-8 (bad bytes replaced); over ``limit`` bytes, truncate with a marker."""
    target = resolve_in_workspace(root, path)
    shown = relative_display(root, target)
    size = _regular_file_size(target, shown)
    with open(target, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) <= limit:
        return data.decode("utf-8", errors="replace")
    # final=False drops a multi-byte character cut in half instead of emitting U+FFFD.
    head = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(data[:limit], final=False)
    return f"{head}\n[... truncated: showing the first {limit} of {size} bytes of {shown}]\n"


def list_dir(root: Path, path: str = ".", max_entries: int = MAX_DIR_ENTRIES) -> list[DirEntry]:
    """The first ``max_entries`` entries of a directory, sorted by name; symlinks are not followed."""
    target = resolve_in_workspace(root, path)
    _require_dir(target, relative_display(root, target))
    with os.scandir(target) as scan:
        # nsmallest keeps memory bounded in a huge directory and returns them sorted.
        chosen = heapq.nsmallest(max_entries, scan, key=lambda entry: entry.name)
    return [DirEntry(printable_name(entry.name), *_kind_and_size(entry)) for entry in chosen]


def modify_text_atomic(root: Path, path: str, old_text: str, new_text: str, gate: StopGate) -> None:
    """Replace the single occurrence of ``old_text`` in ``path`` with ``new_text``, atomically."""
    if old_text == "":
        raise WorkspaceError("old_text must not be empty")
    target = resolve_in_workspace(root, path)
    shown = relative_display(root, target)
    if _regular_file_size(target, shown) > MAX_WRITE_BYTES:
        raise WorkspaceError(f"{shown} is larger than {MAX_WRITE_BYTES} bytes and cannot be modified")
    content = _read_utf8_strict(target, shown)
    count = _count_occurrences(content, old_text)
    if count == 0:
        raise WorkspaceError(f"old_text not found in {shown}")
    if count > 1:
        raise WorkspaceError(f"old_text occurs {count} times in {shown}; make it unique")
    write_text_atomic(root, path, content.replace(old_text, new_text, 1), gate)


def delete_file(root: Path, path: str, gate: StopGate) -> None:
    """Delete one file (a symlink is removed itself); directories and core files are refused."""
    target = resolve_in_workspace(root, path)
    shown = relative_display(root, target)
    _check_managed(shown)
    if _is_core_file(root, target):
        raise WorkspaceError(f"{shown} is a core project file and cannot be deleted")
    try:
        st = os.lstat(target)
    except (FileNotFoundError, NotADirectoryError):
        raise WorkspaceError(f"no such file: {shown}") from None
    if stat.S_ISDIR(st.st_mode):
        raise WorkspaceError(f"{shown} is a directory; only files can be deleted")
    with gate.commit():
        os.unlink(target)


def _tree_children(base: Path, rel_dir: str) -> list[TreeEntry]:
    prefix = f"{rel_dir}/" if rel_dir else ""
    try:
        with os.scandir(base / rel_dir) as scan:
            entries = sorted(scan, key=lambda entry: entry.name)
    except OSError:  # vanished or unreadable: the tree is a best-effort overview
        return []
    return [
        TreeEntry(prefix + printable_name(entry.name), *_kind_and_size(entry))
        for entry in entries
        if entry.name not in SKIP_DIRS and not is_temp_name(entry.name)
    ]


def tree(root: Path, max_entries: int = MAX_TREE_ENTRIES) -> list[TreeEntry]:
    """All workspace entries, depth-first and sorted, without build/VCS dirs or symlink targets."""
    base = workspace_root(root)
    result: list[TreeEntry] = []
    # An explicit stack (children pushed reversed) gives sorted pre-order without recursion limits.
    stack = list(reversed(_tree_children(base, "")))
    while stack and len(result) < max_entries:
        entry = stack.pop()
        result.append(entry)
        if entry.kind == "dir":
            stack.extend(reversed(_tree_children(base, entry.path)))
    return result
