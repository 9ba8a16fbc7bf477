"""Turning a path typed by the model into a path that is guaranteed to be inside the workspace.

Everything here is pure (it reads the filesystem to resolve symlinks, never writes). The rules
are deliberately stricter than POSIX needs: the model has no business using ``..``, absolute
paths, backslashes or URL-encoded separators, and refusing them outright is easier to reason
about than normalising them. The last line of defence is the real-path check, which catches
symlinks planted inside the workspace that point out of it.
"""

from __future__ import annotations

import os
import re
import stat
import unicodedata
from pathlib import Path
from urllib.parse import unquote

MAX_PATH_CHARS = 1024
MAX_COMPONENT_BYTES = 255

# Categories that must never appear in a file name: C0/C1 controls, lone surrogates (not
# encodable) and line/paragraph separators (they break the one-line UI summaries).
_BAD_CATEGORIES = frozenset({"Cc", "Cs", "Zl", "Zp"})
# Bidi overrides can make a name display as something it is not.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
# %2e = ".", %2f = "/", %5c = "\"; a consumer that URL-decodes (a dev server) would see traversal.
_ENCODED_SEPARATOR = re.compile(r"%(2[eEfF]|5[cC])")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
# Double encoding (%252e -> %2e -> .) is unwrapped a few layers deep; more is not plausible.
_MAX_DECODE_LAYERS = 4
# Forms of ".", "/" and "\\" that lenient decoders accept: overlong UTF-8 (%c0%ae, %e0%80%ae)
# and IIS-style %u escapes.
_ODD_ENCODING = re.compile(r"%(c[01]%[0-9a-f]{2}|e0%[89][0-9a-f]%[0-9a-f]{2}|u00(2e|2f|5c))", re.IGNORECASE)
# Characters drawn like "/" or "\\" that NFKC does not fold to them: a name holding one displays
# as a path it is not (and some tools fold them). Those NFKC folds (U+FF0F, U+FF3C, U+FE68) too.
_SEPARATOR_LOOKALIKES = frozenset("\u2215\u2044\u29f8\u29f9\u2216\u2571\u2572\uff0f\uff3c\ufe68")


class WorkspaceError(Exception):
    """An error the model should see and can act on (bad path, missing file, limits...)."""


class PathRefused(WorkspaceError):
    """The path is not acceptable as a workspace path."""


def show_path(user_path: str, limit: int = 80) -> str:
    """Render a (possibly hostile) path safely for an error message: printable and short."""
    text = user_path if user_path.isprintable() else repr(user_path)[1:-1]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _refuse(reason: str, user_path: str) -> PathRefused:
    return PathRefused(f"{reason}: {show_path(user_path)}")


def _check_characters(user_path: str) -> None:
    for char in user_path:
        if unicodedata.category(char) in _BAD_CATEGORIES or char in _BIDI_CONTROLS:
            raise _refuse("path contains a control character", user_path)
    if "\\" in user_path:
        raise _refuse("backslashes are not allowed in paths (use /)", user_path)


def _check_lookalikes(text: str, user_path: str) -> None:
    """Unicode that reads (or NFKC-normalises) as a separator or as "." / "..": fullwidth
    U+FF0E U+FF0F, one/two dot leaders U+2024 U+2025, division slash U+2215, ..."""
    if any(char in _SEPARATOR_LOOKALIKES for char in text):
        raise _refuse("a character that looks like '/' or '\\' is not allowed in paths", user_path)
    if _WINDOWS_DRIVE.match(unicodedata.normalize("NFKC", text)):
        raise _refuse("Windows drive paths are not allowed (after Unicode normalisation)", user_path)
    for part in text.split("/"):
        folded = unicodedata.normalize("NFKC", part)
        if folded != part and (folded in (".", "..") or "/" in folded or "\\" in folded):
            raise _refuse("path has a '.', '..' or separator look-alike (after Unicode normalisation)", user_path)


def _check_encoded_traversal(user_path: str) -> None:
    text = user_path
    for _ in range(_MAX_DECODE_LAYERS):
        if _ENCODED_SEPARATOR.search(text) or _ODD_ENCODING.search(text):
            raise _refuse("URL-encoded '.', '/' or '\\' is not allowed in paths", user_path)
        decoded = unquote(text)
        if decoded == text:
            return
        _check_lookalikes(decoded, user_path)  # %ef%bc%8e is a fullwidth "."
        text = decoded


def _check_shape(user_path: str) -> list[str]:
    """Validate the lexical form and return the meaningful components."""
    if user_path == "":
        raise PathRefused("path is empty (use '.' for the workspace root)")
    if len(user_path) > MAX_PATH_CHARS:
        raise _refuse(f"path is longer than {MAX_PATH_CHARS} characters", user_path)
    _check_characters(user_path)
    if user_path.startswith("/"):
        raise _refuse("absolute paths are not allowed (use a path relative to the workspace)", user_path)
    if _WINDOWS_DRIVE.match(user_path):
        raise _refuse("Windows drive paths are not allowed", user_path)
    _check_lookalikes(user_path, user_path)
    _check_encoded_traversal(user_path)
    parts = [part for part in user_path.split("/") if part not in ("", ".")]
    for part in parts:
        if part == "..":
            raise _refuse("path escapes the workspace", user_path)
        if len(part.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise _refuse(f"a path component is longer than {MAX_COMPONENT_BYTES} bytes", user_path)
    return parts


def is_within(base: str, candidate: str) -> bool:
    """True if the already-real ``candidate`` is ``base`` or below it."""
    return candidate == base or candidate.startswith(base.rstrip(os.sep) + os.sep)


def workspace_root(root: Path) -> Path:
    """The real (symlink-free) absolute path of the workspace root."""
    return Path(os.path.realpath(root))


def resolve_in_workspace(root: Path, user_path: str) -> Path:
    """Return the absolute path of ``user_path`` inside ``root`` or raise :class:`PathRefused`.

    The returned path is lexical (under the real root, not symlink-resolved), so callers can
    still see whether the target itself is a symlink. Its *real* path is guaranteed to be
    inside the root at the time of the call.
    """
    parts = _check_shape(user_path)
    real_root = workspace_root(root)
    candidate = real_root.joinpath(*parts)
    # Non-strict realpath resolves every existing component (the nearest existing ancestor for
    # a new file) and follows dangling symlinks to where they would write.
    if not is_within(str(real_root), os.path.realpath(candidate)):
        raise _refuse("path escapes the workspace", user_path)
    _check_not_hard_linked(candidate, user_path)
    return candidate


def _check_not_hard_linked(candidate: Path, user_path: str) -> None:
    """A regular file with a second name may share its inode with a file outside the workspace
    (a hard link planted by a build script, say): its real path cannot tell. Runforge never
    makes one (writes rename a fresh temp file, git checkouts and template copies write new
    files), so refuse it outright rather than read, serve or rewrite what it shares."""
    try:
        info = os.stat(candidate)
    except (OSError, ValueError):
        return  # missing (a new file), or unreadable: the operation reports it
    if stat.S_ISREG(info.st_mode) and info.st_nlink > 1:
        raise _refuse("refusing a hard-linked file (it may be shared with a file outside the workspace)", user_path)


def relative_display(root: Path, path: Path) -> str:
    """``path`` relative to the workspace root in POSIX form ("." for the root itself)."""
    for base in (workspace_root(root), Path(os.path.abspath(root))):
        try:
            rel = Path(path).relative_to(base)
        except ValueError:
            continue
        return rel.as_posix() if rel.parts else "."
    # Never show a host path outside the workspace; the name alone is enough context.
    return Path(path).name or "."
