"""Running git on a checkpoint repository: no shell, no hooks, and no config, attribute or ignore
file that the workspace (written by an LLM) or the user's environment could influence."""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path

__all__ = ["CheckpointError", "Git", "clear_stale_locks"]

_GIT_CONFIG = (
    "core.hooksPath=/dev/null",
    "commit.gpgsign=false",
    "core.autocrlf=false",
    "core.fsmonitor=false",
    "user.name=Runforge",
    "user.email=runforge@localhost",
    "safe.directory=*",
    # The default user-level files (~/.config/git/ignore, .../attributes) are read even when
    # GIT_CONFIG_GLOBAL hides the global config.
    "core.excludesFile=/dev/null",
    "core.attributesFile=/dev/null",
    # These protect checkouts onto NTFS/HFS+. Nothing is ever checked out into a repository here,
    # and left on they make git refuse names like "git~1/x" that the file tools allow, which would
    # fail every later checkpoint of the app. ".git" itself (any case) is still refused.
    "core.protectNTFS=false",
    "core.protectHFS=false",
    # A triggered `gc --auto` must finish inside our call, not linger as a detached process.
    "gc.autoDetach=false",
)
_CONFIG_ARGS = tuple(arg for item in _GIT_CONFIG for arg in ("-c", item))
_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_ATTR_NOSYSTEM": "1",
    "GIT_TERMINAL_PROMPT": "0",
    "LC_ALL": "C",
}
_GIT_TIMEOUT_S = 120.0
_STDERR_CHARS = 500
# Lock files a killed git (crash, timeout) can leave behind; they would block every later call.
_STALE_LOCKS = ("index.lock", "HEAD.lock", "refs/heads/*.lock")


class CheckpointError(Exception):
    """A checkpoint could not be taken, read or restored, or an argument was invalid."""


@dataclass(frozen=True, slots=True)
class Git:
    """One repository (and optionally its work tree), run without a shell and without any config
    or hook the workspace could influence."""

    executable: str
    git_dir: Path
    work_tree: Path | None = None

    def run(self, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
        command = [self.executable, *_CONFIG_ARGS, f"--git-dir={self.git_dir}"]
        if self.work_tree is not None:
            command.append(f"--work-tree={self.work_tree}")
        try:
            return subprocess.run(
                [*command, *args],
                input=stdin,  # always a pipe: git never reads our stdin
                capture_output=True,
                cwd=self.work_tree or self.git_dir.parent,
                env=_git_env(),
                timeout=_GIT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            clear_stale_locks(self.git_dir)  # the killed git was ours: its locks are stale
            raise CheckpointError(f"git {args[0]} timed out after {_GIT_TIMEOUT_S:g}s") from exc
        except OSError as exc:
            raise CheckpointError(f"cannot run git: {exc}") from exc

    def out(self, *args: str, stdin: bytes = b"") -> bytes:
        """Run and return stdout; any non-zero exit is a :class:`CheckpointError`."""
        proc = self.run(*args, stdin=stdin)
        if proc.returncode != 0:
            detail = proc.stderr.decode("utf-8", "replace").strip()[-_STDERR_CHARS:]
            raise CheckpointError(f"git {args[0]} failed ({proc.returncode}): {detail}")
        return proc.stdout

    def text(self, *args: str) -> str:
        return self.out(*args).decode("utf-8", "replace").strip()


def _git_env() -> dict[str, str]:
    # Inherited GIT_* variables (GIT_DIR, GIT_INDEX_FILE, GIT_EXEC_PATH...) would redirect git.
    env = {key: value for key, value in os.environ.items() if not key.startswith("GIT_")}
    env.update(_GIT_ENV)
    return env


def clear_stale_locks(git_dir: Path) -> None:
    for pattern in _STALE_LOCKS:
        for lock in git_dir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
