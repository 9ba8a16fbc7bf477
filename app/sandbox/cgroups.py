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


@dataclass(frozen=True, slots=True)
class CgroupParents:
    """Where step cgroups are made: one directory per controller (v1) or one for both (v2)."""

    pids: Path
    memory: Path
    unified: bool

    def new_step(self, limits: SandboxLimits) -> StepCgroup:
        name = f"{_PREFIX}{secrets.token_hex(6)}"
        dirs = (self.pids / name,) if self.unified else (self.pids / name, self.memory / name)
        cgroup = StepCgroup(dirs, self.unified)
        cgroup.create(limits)
        return cgroup


class StepCgroup:
    def __init__(self, dirs: tuple[Path, ...], unified: bool) -> None:
        self.dirs = dirs
        self._unified = unified

    def create(self, limits: SandboxLimits) -> None:
        for path in self.dirs:
            path.mkdir()
        try:
            self._write_limits(limits)
        except OSError:
            self.close()
            raise

    def _write_limits(self, limits: SandboxLimits) -> None:
        pids_dir, memory_dir = self.dirs[0], self.dirs[-1]
        if limits.processes:
            (pids_dir / "pids.max").write_text(str(limits.processes))
        if limits.memory_bytes:
            name = "memory.max" if self._unified else "memory.limit_in_bytes"
            (memory_dir / name).write_text(str(limits.memory_bytes))
        if not self._unified and limits.memory_bytes:
            # v1 counts swap separately: without this, a step past its limit pages out instead.
            with contextlib.suppress(OSError):
                (memory_dir / "memory.memsw.limit_in_bytes").write_text(str(limits.memory_bytes))

    def join_argv(self) -> list[str]:
        """A prefix that moves the step's first process into the cgroup, then execs the rest."""
        script = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'
        return ["/bin/sh", "-c", script, "runforge-cgroup", *(str(path / "cgroup.procs") for path in self.dirs), "--"]

    def limit_hit(self) -> str | None:
        pids_dir, memory_dir = self.dirs[0], self.dirs[-1]
        if _counter(pids_dir / "pids.events", "max"):
            return "processes"
        if self._unified and _counter(memory_dir / "memory.events", "oom_kill"):
            return "memory"
        # v1: oom_kill, not failcnt, which also counts page cache the kernel reclaimed at the limit.
        if not self._unified and _counter(memory_dir / "memory.oom_control", "oom_kill"):
            return "memory"
        return None

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
    return _usable(_v1_parents()) if os.geteuid() == 0 else None


def _v1_parents() -> CgroupParents | None:
    own = _own_v1_paths()
    if "pids" not in own or "memory" not in own:
        return None
    pids = _V1_ROOT / "pids" / own["pids"].lstrip("/")
    memory = _V1_ROOT / "memory" / own["memory"].lstrip("/")
    return CgroupParents(pids, memory, unified=False)


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
    return parents


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
