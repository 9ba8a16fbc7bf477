"""The jail both shipped sandboxes hand out: an argv wrapped in cgroup join, confinement and rlimits."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from app.sandbox.cgroups import CgroupParents, StepCgroup
from app.sandbox.rlimits import nproc_applies, prlimit_argv
from app.sandbox.settings import SandboxLimits


@dataclass(slots=True)
class StepJail:
    argv: list[str]
    env: dict[str, str]
    cwd: Path
    cgroup: StepCgroup | None = field(default=None)

    def limit_hit(self) -> str | None:
        return self.cgroup.limit_hit() if self.cgroup is not None else None

    def close(self) -> None:
        if self.cgroup is not None:
            self.cgroup.close()


def limited(
    argv: list[str], limits: SandboxLimits, cgroups: CgroupParents | None
) -> tuple[list[str], StepCgroup | None]:
    """``argv`` under the rlimits, and the step's cgroup when there is one (made here: close it)."""
    cgroup = cgroups.new_step(limits) if cgroups is not None else None
    # A cgroup counts the step's processes; without one, RLIMIT_NPROC does, unless we are root.
    return prlimit_argv(limits, processes=cgroup is None and nproc_applies()) + argv, cgroup


def enforcement(cgroups: CgroupParents | None, *, tmpfs: bool) -> dict[str, str]:
    """How each limit is enforced, for /readyz and the banner."""
    without_cgroup = "rlimit" if nproc_applies() else "none (root without a cgroup)"
    processes = "cgroup" if cgroups is not None else without_cgroup
    memory = "cgroup" if cgroups is not None and cgroups.memory is not None else "rlimit (per process)"
    return {
        "cpu": "rlimit (per process)",
        "memory": memory,
        "processes": processes,
        "file_size": "rlimit",
        "write_bytes": "watchdog",
        "tmp": "tmpfs" if tmpfs else "none (the host's /tmp)",
    }
