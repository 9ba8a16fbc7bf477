"""A cgroup per sandboxed step: processes and memory bounded for the whole step, not per process.

Used where the server may make cgroups: as root on cgroup v1 (the pids and memory hierarchies),
or under a cgroup v2 directory the operator delegated (``RUNFORGE_BUILD_CGROUP=/sys/fs/cgroup/...``,
with ``+pids +memory`` in its ``cgroup.subtree_control``). The step's first process joins it before
it execs the sandbox (:func:`join_argv`), so nothing the step starts is ever outside it. Afterwards
the counters say whether a limit was hit, and :meth:`StepCgroup.close` kills what is left and
removes it.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from app.sandbox.settings import SandboxLimits

_V1_ROOT = Path("/sys/fs/cgroup")
_PREFIX = "runforge-"
_EMPTY_WITHIN_S = 5.0
_STALE_AFTER_S = 60.0


@dataclass(frozen=True, slots=True)
class CgroupParents:
    """Where step cgroups are made: one directory per controller (v1) or one for both (v2)."""

    pids: Path
    memory: Path | None  # v1 without a usable memory hierarchy: processes only
    unified: bool

    def new_step(self, limits: SandboxLimits) -> StepCgroup:
        name = f"{_PREFIX}{secrets.token_hex(6)}"
        if self.unified:
            cgroup = StepCgroup(self.pids / name, self.pids / name)
        else:
            cgroup = StepCgroup(self.pids / name, self.memory / name if self.memory else None)
        cgroup.create(limits)
        return cgroup


class StepCgroup:
    def __init__(self, pids_dir: Path, memory_dir: Path | None) -> None:
        self._pids_dir = pids_dir
        self._memory_dir = memory_dir
        self._unified = pids_dir == memory_dir
        self.dirs = tuple(dict.fromkeys(path for path in (pids_dir, memory_dir) if path is not None))

    def create(self, limits: SandboxLimits) -> None:
        for path in self.dirs:
            path.mkdir()
        try:
            self._write_limits(limits)
        except OSError:
            self.close()
            raise

    @property
    def bounds_memory(self) -> bool:
        return self._memory_dir is not None

    def _write_limits(self, limits: SandboxLimits) -> None:
        if limits.processes:
            (self._pids_dir / "pids.max").write_text(str(limits.processes))
        if limits.memory_bytes and self._memory_dir is not None:
            name = "memory.max" if self._unified else "memory.limit_in_bytes"
            (self._memory_dir / name).write_text(str(limits.memory_bytes))
            if not self._unified:
                # v1 counts swap separately: without this, a step past its limit pages out instead.
                with contextlib.suppress(OSError):
                    (self._memory_dir / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_bytes))

    def join_argv(self) -> list[str]:
        """A prefix that moves the step's first process into the cgroup, then execs the rest."""
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", script, "runforge-cgroup", *(str(path / "cgroup.procs") for path in self.dirs), "--"]

    def limit_hit(self) -> str | None:
        if _counter(self._pids_dir / "pids.events", "max"):
            return "processes"
        if self._memory_dir is None:
            return None
        # v1: oom_kill, not failcnt, which also counts page cache the kernel reclaimed at the limit.
        events = "memory.events" if self._unified else "memory.oom_control"
        return "memory" if _counter(self._memory_dir / events, "oom_kill") else None

    def close(self) -> None:
        """Kill every process left in the cgroup, wait until it is empty, remove it."""
        deadline = time.monotonic() + _EMPTY_WITHIN_S
        for path in self.dirs:
            while _kill_members(path) and time.monotonic() < deadline:
                time.sleep(0.01)  # the kernel announces no exit to us: poll, briefly
            with contextlib.suppress(OSError):
                path.rmdir()


def find_parents(setting: str) -> CgroupParents | None:
    """Where this process may make step cgroups, per ``setting`` ("auto", "off" or a v2 path)."""
    if setting == "off":
        return None
    if setting != "auto":
        return _usable(CgroupParents(Path(setting), Path(setting), unified=True))
    if os.geteuid() != 0:
        return None
    return _usable(_v1_parents(memory=True)) or _usable(_v1_parents(memory=False))


def _v1_parents(*, memory: bool) -> CgroupParents | None:
    own = _own_v1_paths()
    if "pids" not in own or (memory and "memory" not in own):
        return None
    pids = _V1_ROOT / "pids" / own["pids"].lstrip("/")
    memory_dir = _V1_ROOT / "memory" / own["memory"].lstrip("/") if memory else None
    return CgroupParents(pids, memory_dir, unified=False)


def _own_v1_paths() -> dict[str, str]:
    """controller -> this process's cgroup path, from /proc/self/cgroup (v1 lines only)."""
    paths: dict[str, str] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            for controller in controllers.split(","):
                if controller:
                    paths[controller] = path
    return paths


def _usable(parents: CgroupParents | None) -> CgroupParents | None:
    """The parents if a step cgroup can be made, limited and removed there now."""
    if parents is None:
        return None
    try:
        parents.new_step(SandboxLimits()).close()
    except OSError:
        return None
    _sweep(parents)
    return parents


def _sweep(parents: CgroupParents) -> None:
    """Remove step cgroups a killed server left behind (empty, and older than any step in the making).

    rmdir removes only an empty cgroup, so a running step's stays; the age spares one another
    worker has just made and not yet joined.
    """
    cutoff = time.time() - _STALE_AFTER_S
    for parent in dict.fromkeys(path for path in (parents.pids, parents.memory) if path is not None):
        for path in parent.glob(f"{_PREFIX}*"):
            with contextlib.suppress(OSError):
                if path.stat().st_mtime < cutoff:
                    path.rmdir()


def _kill_members(path: Path) -> bool:
    """SIGKILL every process in the cgroup; True while any was there."""
    try:
        pids = [int(line) for line in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return False
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return bool(pids)


def _counter(path: Path, key: str) -> int:
    with contextlib.suppress(OSError, ValueError):
        for line in path.read_text().splitlines():
            name, _, value = line.partition(" ")
            if name == key:
                return int(value)
    return 0
