"""Per-app workspace checkpoints, kept in a git repository that lives outside the workspace.

Why git: content addressing makes "a checkpoint after every run" cheap (an unchanged file costs
nothing) and ``read-tree -u --reset`` gives an exact restore.

Why the repository is ``<root>/<app_id>.git`` and never the workspace's own ``.git``: the workspace
is written by an LLM through the file tools, and a ``.git`` it controls means hooks, filters and
config, i.e. code execution. Every git process here therefore gets ``--git-dir``/``--work-tree``,
no shell, no hooks, no system/global/user config, no user-level ignore or attribute files, no
fsmonitor and no signing. The repository's ``info/attributes`` outranks any ``.gitattributes`` in the
workspace and switches off every content conversion, so a checkpoint stores and restores bytes.

What a checkpoint holds: every regular file and symlink in the workspace except ``node_modules/``,
``dist/``, ``.runforge-build-*/`` and any ``.git`` (these are never committed and never removed by a
restore). The workspace is walked here rather than with ``git add -A`` on purpose: ``add`` obeys the
workspace's own ``.gitignore`` (a model-written ``*`` would empty every checkpoint) and aborts on a
directory that merely looks like a nested repository (a planted ``sub/.git/HEAD`` would break every
checkpoint of the app). The index is fed explicit paths through ``update-index`` instead.

Blocking API: callers use ``asyncio.to_thread``. One lock per app keeps two threads from running git
on one repository at once. Stale git lock files are removed under that lock, which assumes one
Runforge process owns the data directory (as it owns the SQLite store).

Invalid arguments (app id, run id, sha) raise :class:`CheckpointError`, like every other failure, so
callers handle one exception type.
"""

from __future__ import annotations

import builtins
import contextlib
import os
import re
import secrets
import shutil
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from app.checkpoints.diff import CheckpointDiff, changed_file_count, diff_checkpoint
from app.checkpoints.git_process import CheckpointError, Git, clear_stale_locks
from app.checkpoints.workspace_walk import EXCLUDE, nul_joined, workspace_files

__all__ = ["Checkpoint", "CheckpointError", "Checkpoints"]

_APP_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
_RUN_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")

_SUBJECTS = {
    "baseline": "baseline before run {run_id}",
    "run": "run {run_id}",
    "revert": "revert to run {run_id}",
}
_RUN_ID_TRAILER = "Runforge-Run-Id"
_KIND_TRAILER = "Runforge-Kind"
# Unit (%x1f) and record (%x1e) separators cannot occur in our subjects or trailers.
_LOG_FORMAT = (
    "%H%x1f%T%x1f%ct%x1f%s"
    f"%x1f%(trailers:key={_RUN_ID_TRAILER},valueonly)%x1f%(trailers:key={_KIND_TRAILER},valueonly)%x1e"
)

# Outranks the workspace's .gitattributes: no eol conversion, no filter drivers, no $Id$ expansion,
# no re-encoding. Filter drivers could not run anyway (their commands live in config we never
# read), but conversions alone would make a checkpoint differ from the bytes on disk.
_ATTRIBUTES = "* -text -crlf -eol -filter -ident -working-tree-encoding\n"

_TREE_CACHE_MAX = 10_000


@dataclass(frozen=True, slots=True)
class Checkpoint:
    sha: str
    run_id: str
    kind: str  # "baseline" (found before a run) | "run" (after a completed run) | "revert"
    created_at: datetime  # aware, UTC; git's committer time (whole seconds)
    summary: str  # the commit subject line
    files: int  # number of files (and symlinks) in the commit's tree
    files_changed: int  # files added, modified or deleted against the checkpoint before it


def _check(pattern: re.Pattern[str], value: str, what: str) -> None:
    if not isinstance(value, str) or pattern.fullmatch(value) is None:
        raise CheckpointError(f"invalid {what}: {value!r}"[:200])


# --- log parsing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Entry:
    sha: str
    tree: str
    created_at: datetime
    summary: str
    run_id: str
    kind: str


def _parse_log(raw: bytes) -> builtins.list[_Entry]:
    entries: builtins.list[_Entry] = []
    for record in raw.decode("utf-8", "replace").split("\x1e"):
        fields = [field.strip() for field in record.split("\x1f")]
        if len(fields) != 6:
            continue  # the empty tail after the last separator
        sha, tree, timestamp, summary, run_id, kind = fields
        if kind not in _SUBJECTS or _RUN_ID.fullmatch(run_id) is None:
            continue  # not written by us, so not a checkpoint
        created_at = datetime.fromtimestamp(int(timestamp), tz=UTC)
        entries.append(_Entry(sha, tree, created_at, summary, run_id, kind))
    return entries


def _message(kind: str, run_id: str) -> bytes:
    subject = _SUBJECTS[kind].format(run_id=run_id)
    return f"{subject}\n\n{_RUN_ID_TRAILER}: {run_id}\n{_KIND_TRAILER}: {kind}\n".encode()


# --- the store -------------------------------------------------------------------------------


class Checkpoints:
    """Checkpoints of every app's workspace, one bare repository per app under ``root``.

    The per-app locks live in the instance: share one instance per root.
    """

    def __init__(self, root: Path) -> None:
        self._root = Path(os.path.abspath(root))
        self._git_executable = shutil.which("git")
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._tree_files: dict[str, int] = {}  # tree sha -> file count; trees never change
        self._changes: dict[str, int] = {}  # commit sha -> files changed; commits never change

    # --- public API ---------------------------------------------------------------------------

    def base(self, app_id: str, workspace: Path, run_id: str) -> str | None:
        """Before a run: commit the workspace (kind "baseline") if it differs from HEAD, creating the
        repository and the workspace directory if needed.

        Returns the sha the run starts from, which is what a rollback restores, or ``None`` for an
        app with no repository yet whose workspace holds nothing: then no git runs at all, and the
        first :meth:`commit_run` writes that empty baseline under its own commit, so the history
        is the same as if it had been taken now. (A run's start competes with every stop for the
        CPU: measured, a burst of 500 first runs kept half a core busy with git processes.)
        """
        _check(_RUN_ID, run_id, "run id")
        with self._locked(app_id) as git_dir:
            if self._baseline_deferred(git_dir, workspace):
                return None
            git = self._open(git_dir, workspace, create=True)
            tree = self._stage(git)
            head = _head(git)
            if head is not None and git.text("rev-parse", f"{head}^{{tree}}") == tree:
                return head  # nothing new since the last checkpoint: no duplicate baseline
            return self._commit(git, tree, head, "baseline", run_id)

    def commit_run(self, app_id: str, workspace: Path, run_id: str) -> Checkpoint:
        """After a completed run: commit the workspace (kind "run"), even when nothing changed, so
        every completed run has its own checkpoint. The app's first one comes after the empty
        baseline that :meth:`base` left to it."""
        _check(_RUN_ID, run_id, "run id")
        with self._locked(app_id) as git_dir:
            git = self._open(git_dir, workspace, create=True)
            head = _head(git)
            if head is None:
                head = self._commit(git, _empty_tree(git), None, "baseline", run_id)
            sha = self._commit(git, self._stage(git), head, "run", run_id)
            return self._read_one(git, sha)

    def list(self, app_id: str) -> builtins.list[Checkpoint]:
        """All checkpoints, newest first; [] when the app has none."""
        with self._locked(app_id) as git_dir:
            if not _exists(git_dir):
                return []
            git = self._open(git_dir, None, create=False)
            return [self._checkpoint(git, entry) for entry in self._log(git)]

    def diff(self, app_id: str, sha: str) -> CheckpointDiff:
        """What checkpoint ``sha`` changed against the one before it (app/checkpoints/diff.py)."""
        _check(_SHA, sha, "checkpoint sha")
        with self._locked(app_id) as git_dir:
            if not _exists(git_dir):
                raise CheckpointError(f"no checkpoint {sha} in app {app_id}")
            git = self._open(git_dir, None, create=False)
            if sha not in {entry.sha for entry in self._log(git)}:
                raise CheckpointError(f"no checkpoint {sha} in app {app_id}")
            return diff_checkpoint(git.out, sha)

    def find_run(self, app_id: str, run_id: str) -> Checkpoint | None:
        """The checkpoint (kind "run") taken when ``run_id`` completed, if any."""
        _check(_RUN_ID, run_id, "run id")
        with self._locked(app_id) as git_dir:
            if not _exists(git_dir):
                return None
            return self._find_run(self._open(git_dir, None, create=False), run_id)

    def restore(self, app_id: str, workspace: Path, sha: str | None) -> None:
        """Make the workspace equal to the tree of ``sha`` (``None``: empty, the baseline :meth:`base`
        did not write): tracked files restored, others removed, ignored paths untouched. HEAD does
        not move and nothing is committed."""
        if sha is not None:
            _check(_SHA, sha, "checkpoint sha")
        with self._locked(app_id) as git_dir:
            git = self._open(git_dir, workspace, create=sha is None)
            self._restore(git, _empty_tree(git) if sha is None else sha)

    def revert_to_run(self, app_id: str, workspace: Path, run_id: str) -> Checkpoint:
        """Restore the state after ``run_id`` and commit it (kind "revert"), so a revert can itself
        be reverted. :class:`CheckpointError` if that run has no checkpoint."""
        _check(_RUN_ID, run_id, "run id")
        with self._locked(app_id) as git_dir:
            git = self._open(git_dir, workspace, create=False)
            target = self._find_run(git, run_id)
            if target is None:
                raise CheckpointError(f"run {run_id} has no checkpoint")
            self._restore(git, target.sha)
            sha = self._commit(git, self._stage(git), _head(git), "revert", run_id)
            return self._read_one(git, sha)

    def delete(self, app_id: str) -> None:
        """Remove the app's repository (the app was deleted)."""
        with self._locked(app_id) as git_dir:
            if git_dir.exists():
                shutil.rmtree(git_dir)

    # --- locking and opening --------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, app_id: str) -> Iterator[Path]:
        """Hold the app's lock; yields its git dir. The app id is validated before it is a path."""
        _check(_APP_ID, app_id, "app id")
        with self._locks_guard:
            lock = self._locks.setdefault(app_id, threading.Lock())
        with lock:
            git_dir = self._root / f"{app_id}.git"
            try:
                clear_stale_locks(git_dir)  # no git of ours runs on it while we hold the lock
                yield git_dir
            except OSError as exc:  # an unreadable workspace, a full disk...: one error type for callers
                raise CheckpointError(f"checkpoint storage failed: {exc}") from exc

    def _open(self, git_dir: Path, workspace: Path | None, *, create: bool) -> Git:
        """The app's repository (created if ``create``), with the workspace as work tree; a missing
        workspace directory is created, once the repository is known to exist."""
        if self._git_executable is None:
            raise CheckpointError("git is not installed")
        work_tree = None if workspace is None else _work_tree(Path(workspace), git_dir)
        git = Git(self._git_executable, git_dir, work_tree)
        if not _exists(git_dir):
            if not create:
                raise CheckpointError(f"app {git_dir.stem} has no checkpoints")
            self._init(git)
        if work_tree is not None:
            work_tree.mkdir(parents=True, exist_ok=True)
        return git

    def _baseline_deferred(self, git_dir: Path, workspace: Path) -> bool:
        """No repository yet and nothing in the workspace: :meth:`base` has nothing to write. What
        it would refuse (an overlap, a foreign directory in the repository's place) it refuses."""
        if _exists(git_dir):
            return False
        _work_tree(Path(workspace), git_dir)
        _refuse_foreign(git_dir)
        return not _has_files(workspace)

    def _init(self, git: Git) -> None:
        """Create the bare repository next to its final name, then rename: a crash never leaves a
        half-made repository under the real name."""
        _refuse_foreign(git.git_dir)
        self._root.mkdir(parents=True, exist_ok=True)
        staging = self._root / f".{git.git_dir.name}.{secrets.token_hex(8)}.tmp"
        try:
            # --template= : no sample hooks, no description; info/ is written below.
            Git(git.executable, staging).out("init", "--quiet", "--bare", "--template=", "--initial-branch=main")
            (staging / "info").mkdir()
            (staging / "info" / "exclude").write_text(EXCLUDE)
            (staging / "info" / "attributes").write_text(_ATTRIBUTES)
            staging.rename(git.git_dir)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    # --- building blocks (the app's lock is held) -----------------------------------------------

    def _stage(self, git: Git) -> str:
        """Make the index equal to the workspace and return its tree sha."""
        assert git.work_tree is not None
        files = workspace_files(git.work_tree)
        indexed = {path for path in git.out("ls-files", "-z").split(b"\0") if path}
        gone = indexed - files
        if gone:
            git.out("update-index", "--force-remove", "-z", "--stdin", stdin=nul_joined(gone))
        if files:
            # --remove: a file deleted since the walk drops out; --replace: a file that became a
            # directory (or the reverse) replaces the old entry.
            update = ("update-index", "--add", "--remove", "--replace", "-z", "--stdin")
            git.out(*update, stdin=nul_joined(files))
        return git.text("write-tree")

    def _commit(self, git: Git, tree: str, parent: str | None, kind: str, run_id: str) -> str:
        # Plumbing, not `git commit`: no hooks, no editor, and update-ref checks the old HEAD.
        parents = ("-p", parent) if parent is not None else ()
        sha = git.out("commit-tree", tree, *parents, "-F", "-", stdin=_message(kind, run_id)).decode().strip()
        git.out("update-ref", "HEAD", sha, parent or "")
        git.out("gc", "--auto", "--quiet")  # keeps loose objects bounded; usually a no-op
        return sha

    def _restore(self, git: Git, sha: str) -> None:
        if git.run("rev-parse", "--verify", "--quiet", f"{sha}^{{tree}}").returncode != 0:
            raise CheckpointError(f"unknown checkpoint {sha}")
        self._stage(git)  # files created since the checkpoint are now in the index...
        git.out("read-tree", "-u", "--reset", sha)  # ...so this removes them, and restores the rest
        git.out("clean", "-fdq")  # left-overs (empty directories); never -x: ignored paths stay

    def _log(self, git: Git) -> builtins.list[_Entry]:
        if _head(git) is None:
            return []
        return _parse_log(git.out("log", f"--format={_LOG_FORMAT}", "HEAD", "--"))

    def _find_run(self, git: Git, run_id: str) -> Checkpoint | None:
        for entry in self._log(git):
            if entry.kind == "run" and entry.run_id == run_id:
                return self._checkpoint(git, entry)
        return None

    def _read_one(self, git: Git, sha: str) -> Checkpoint:
        entries = _parse_log(git.out("log", "-1", f"--format={_LOG_FORMAT}", sha, "--"))
        if not entries:
            raise CheckpointError(f"commit {sha} is not a checkpoint")
        return self._checkpoint(git, entries[0])

    def _checkpoint(self, git: Git, entry: _Entry) -> Checkpoint:
        files = _cached(self._tree_files, entry.tree, lambda: _count_files(git, entry.tree))
        changed = _cached(self._changes, entry.sha, lambda: changed_file_count(git.out, entry.sha))
        return Checkpoint(entry.sha, entry.run_id, entry.kind, entry.created_at, entry.summary, files, changed)


def _count_files(git: Git, tree: str) -> int:
    return git.out("ls-tree", "-r", "-z", "--name-only", tree).count(b"\0")


def _cached(cache: dict[str, int], key: str, compute: Callable[[], int]) -> int:
    """``cache[key]``, computed on a miss; the cache is cleared when full (its keys are immutable
    git objects, so a miss only costs one git call)."""
    value = cache.get(key)
    if value is None:
        value = compute()
        if len(cache) >= _TREE_CACHE_MAX:
            cache.clear()
        cache[key] = value
    return value


def _exists(git_dir: Path) -> bool:
    return (git_dir / "HEAD").is_file()


def _refuse_foreign(git_dir: Path) -> None:
    """Something that is not a repository of ours in its place: never ours to touch (we only
    ever rename a complete repository there)."""
    if os.path.lexists(git_dir):
        raise CheckpointError(f"{git_dir} exists but is not a repository; left for an operator")


def _has_files(workspace: Path) -> bool:
    """Whether the workspace holds anything a checkpoint would (a missing one holds nothing)."""
    try:
        return bool(workspace_files(workspace))
    except FileNotFoundError:
        return False


def _empty_tree(git: Git) -> str:
    return git.out("mktree").decode().strip()


def _head(git: Git) -> str | None:
    proc = git.run("rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    return proc.stdout.decode().strip() if proc.returncode == 0 else None


def _work_tree(workspace: Path, git_dir: Path) -> Path:
    """The absolute workspace path, refusing any overlap with the git dir (the file tools must
    never reach the repository, and git must never treat its own files as workspace files)."""
    real_workspace, real_git_dir = Path(os.path.realpath(workspace)), Path(os.path.realpath(git_dir))
    if real_git_dir.is_relative_to(real_workspace) or real_workspace.is_relative_to(real_git_dir):
        raise CheckpointError("the checkpoint repository and the workspace overlap")
    return real_workspace
