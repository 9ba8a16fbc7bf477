"""Reading a workspace out: preview files and the download archive (blocking; run in threads).

Both only ever read regular files reached without following a symlink at the last step, below
a root the path was confined to by :func:`resolve_in_workspace`; neither lists directories.
"""

from __future__ import annotations

import io
import mimetypes
import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path

from app.workspace.fs import MANAGED_PREFIX, is_temp_name
from app.workspace.paths import PathRefused, resolve_in_workspace

# Never in a download: reproducible (node_modules), internal (.git), or half-made (.runforge-*).
ARCHIVE_SKIP_DIRS = frozenset({"node_modules", ".git"})
MAX_PREVIEW_FILE_BYTES = 50 * 1024 * 1024
MAX_ARCHIVE_BYTES = 200 * 1024 * 1024

# mimetypes' table depends on the host's /etc/mime.types: pin what a site needs.
_CONTENT_TYPES = {
    ".html": "text/html",
    ".htm": "text/html",
    ".css": "text/css",
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".json": "application/json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
    ".ico": "image/x-icon",
    ".wasm": "application/wasm",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".txt": "text/plain",
    ".xml": "application/xml",
}
_TEXT_TYPES = ("text/", "application/json", "application/xml", "image/svg+xml")


class NotServable(Exception):
    """No such file to serve (missing, a directory without index.html, hidden, too big)."""


@dataclass(frozen=True, slots=True)
class PreviewFile:
    content: bytes
    media_type: str
    # Set when the path named a directory: serve it at this path + "/" (relative URLs need it).
    redirect_to_dir: bool = False


def content_type(name: str) -> str:
    suffix = Path(name).suffix.lower()
    media_type = _CONTENT_TYPES.get(suffix) or mimetypes.guess_type(name)[0] or "application/octet-stream"
    if media_type.startswith(_TEXT_TYPES):
        return f"{media_type}; charset=utf-8"
    return media_type


def read_preview_file(root: Path, relative: str) -> PreviewFile:
    """The file at ``relative`` below ``root``; "" and "dir/" mean the directory's index.html.

    Raises :class:`PathRefused` for a path that escapes, :class:`NotServable` otherwise.
    """
    if any(part.startswith(".") for part in relative.split("/") if part):
        raise NotServable("hidden files are not served")
    if root.is_symlink():
        # resolve_in_workspace confines to the root's *real* path: a root that is itself a link
        # (a planted ``dist -> /``) would make anywhere it points the served tree.
        raise NotServable("the preview root is a symlink")
    wants_dir = relative == "" or relative.endswith("/")
    target = resolve_in_workspace(root, relative.rstrip("/") or ".")
    if target.is_dir():
        if not wants_dir:
            if (target / "index.html").is_file():
                return PreviewFile(b"", "", redirect_to_dir=True)
            raise NotServable("directories are not listed")
        target = resolve_in_workspace(root, f"{relative}index.html")
    elif wants_dir:
        raise NotServable("not a directory")
    return PreviewFile(_read_regular(target), content_type(target.name))


def _read_regular(path: Path) -> bytes:
    try:
        # O_NOFOLLOW: a symlink planted at the last step is refused, not followed.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise NotServable(str(exc)) from None
    with os.fdopen(fd, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise NotServable("not a regular file")
        if info.st_nlink > 1:  # may be the inode of a file outside (see resolve_in_workspace)
            raise NotServable("a hard-linked file")
        if info.st_size > MAX_PREVIEW_FILE_BYTES:
            raise NotServable("file too large to preview")
        return file.read()


def build_archive(root: Path) -> bytes:
    """The workspace as a zip, without node_modules, .git, Runforge's temp files, symlinks or
    hard-linked files."""
    buffer = io.BytesIO()
    total = 0
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        if root.is_dir():
            for path, name in _archive_members(root):
                try:
                    data = _read_regular(path)
                except NotServable:
                    continue  # vanished, replaced by a link, or too big: leave it out
                total += len(data)
                if total > MAX_ARCHIVE_BYTES:
                    raise NotServable("the workspace is too large to download")
                archive.writestr(name, data)
    return buffer.getvalue()


def _archive_members(root: Path) -> list[tuple[Path, str]]:
    members: list[tuple[Path, str]] = []
    for directory, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        base = Path(directory)
        for filename in sorted(filenames):
            path = base / filename
            if _skipped(filename) or path.is_symlink():
                continue
            members.append((path, path.relative_to(root).as_posix()))
    return members


def _skipped(name: str) -> bool:
    return name in ARCHIVE_SKIP_DIRS or name.startswith(MANAGED_PREFIX) or is_temp_name(name)


__all__ = ["NotServable", "PathRefused", "PreviewFile", "build_archive", "content_type", "read_preview_file"]
