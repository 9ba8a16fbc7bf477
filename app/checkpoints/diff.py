"""What one checkpoint changed against the one before it: the files, their line counts, the text diff.

Checkpoints form one line of commits (baseline, run, revert, ...), so "the checkpoint before" is
the commit's parent; the first one is compared with the empty tree. Git computes it all in three
calls (name-status, numstat, one patch), with external diff drivers and textconv off: the
workspace's files are the model's, and git must never run anything they name. A binary file is
named, never dumped; the patch text is capped at ``max_bytes`` in all, and a file whose diff no
longer fits is listed with ``truncated`` set and no text.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

# git's empty tree (SHA-1 and SHA-256 repositories): what the first checkpoint is compared with.
_EMPTY_TREES = {
    40: "4b825dc642cb6eb9a060e54bf8d69288fbee4904",
    64: "6ef19b41225c5369f1c104d45d8d85efa9b057b53b14b4b9b939dd74decc5321",
}
_STATUS = {"A": "added", "M": "modified", "D": "deleted", "T": "modified"}
_DIFF_ARGS = ("--no-renames", "--no-ext-diff", "--no-textconv", "--no-color")
DEFAULT_MAX_BYTES = 512 * 1024

Git = Callable[..., bytes]  # runs git with these arguments in the app's repository, returns stdout


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str
    status: str  # added | modified | deleted
    added: int | None  # lines; None for a binary file
    removed: int | None
    binary: bool
    diff: str | None  # the unified diff (3 lines of context); None when binary or cut by the cap
    truncated: bool  # its diff did not fit in what was left of the cap


@dataclass(frozen=True, slots=True)
class CheckpointDiff:
    sha: str
    parent: str | None  # None: the first checkpoint, compared with an empty workspace
    files: list[FileChange]
    truncated: bool  # some file's diff was left out for the cap


def diff_checkpoint(git: Git, sha: str, max_bytes: int = DEFAULT_MAX_BYTES) -> CheckpointDiff:
    parent = _parent(git, sha)
    base = parent or _EMPTY_TREES[len(sha)]
    statuses = _name_status(git(*("diff", "--name-status", "-z", *_DIFF_ARGS, base, sha)))
    counts = _numstat(git(*("diff", "--numstat", "-z", *_DIFF_ARGS, base, sha)))
    patches = _split_patch(git(*("diff", "-U3", *_DIFF_ARGS, base, sha)), list(statuses))
    files, left = [], max_bytes
    for path, status in statuses.items():
        added, removed = counts.get(path, (None, None))
        binary = added is None
        text = None if binary else patches.get(path)
        fits = text is not None and len(text.encode()) <= left
        left -= len(text.encode()) if fits and text is not None else 0
        files.append(FileChange(path, status, added, removed, binary, text if fits else None, not binary and not fits))
    return CheckpointDiff(sha, parent, files, any(f.truncated for f in files))


def changed_file_count(git: Git, sha: str) -> int:
    """How many files checkpoint ``sha`` added, modified or deleted against the one before it."""
    raw = git("diff-tree", "-r", "-z", "--name-only", "--no-commit-id", "--root", "--no-renames", sha)
    return raw.count(b"\0")


def _parent(git: Git, sha: str) -> str | None:
    commits = git("rev-list", "--parents", "-n", "1", sha).decode().split()
    return commits[1] if len(commits) > 1 else None


def _name_status(raw: bytes) -> dict[str, str]:
    """path -> added | modified | deleted, in git's order (by path)."""
    fields = raw.split(b"\0")
    return {
        _decode(fields[i + 1]): _STATUS.get(fields[i].decode()[:1], "modified") for i in range(0, len(fields) - 1, 2)
    }


def _numstat(raw: bytes) -> dict[str, tuple[int | None, int | None]]:
    """path -> (lines added, lines removed); (None, None) for a binary file ("-\\t-")."""
    counts: dict[str, tuple[int | None, int | None]] = {}
    for record in raw.split(b"\0"):
        if record.count(b"\t") < 2:
            continue
        added, removed, path = record.split(b"\t", 2)
        binary = added == b"-"
        counts[_decode(path)] = (None, None) if binary else (int(added), int(removed))
    return counts


def _split_patch(raw: bytes, paths: list[str]) -> dict[str, str]:
    """One file's part of the patch per path: git writes them in the same order as name-status."""
    parts = raw.split(b"\ndiff --git ")
    parts = [parts[0], *(b"diff --git " + part for part in parts[1:])]
    if not raw:
        return {}
    return {path: _decode(part).rstrip("\n") + "\n" for path, part in zip(paths, parts, strict=False)}


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", "replace")
