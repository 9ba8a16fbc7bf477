"""The kernel's per-process limits (rlimits), set by ``prlimit`` just before the step's command runs.

They are inherited by every process the command starts. Two caveats, both covered elsewhere:
an rlimit bounds one process, not the step (a cgroup bounds the step, app/sandbox/cgroups.py);
and the kernel does not apply the process-count limit to root, so a server running as root
bounds processes with a cgroup or not at all (``enforced_limits`` says which).
"""

from __future__ import annotations

import os
import re

from app.sandbox.settings import SandboxLimits

PRLIMIT = "prlimit"
_CPU_GRACE_S = 5

# What a process killed by a limit leaves in the step's output, by limit.
_MARKS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("cpu", re.compile(r"SIGXCPU|CPU time limit exceeded")),
    ("file_size", re.compile(r"SIGXFSZ|File size limit exceeded|EFBIG|File too large")),
    ("memory", re.compile(r"out of memory|[Aa]llocation failed|ENOMEM|Cannot allocate memory")),
    ("processes", re.compile(r"EAGAIN|Resource temporarily unavailable|Cannot fork|fork: retry")),
)


def prlimit_argv(limits: SandboxLimits, *, processes: bool) -> list[str]:
    """``prlimit --... --``: each limit as both soft and hard, so the step cannot raise it again
    (CPU time excepted: its hard limit is a few seconds above, see below)."""
    options = ["--core=0"]  # no core dumps written into the workspace
    if limits.cpu_s:
        # soft:hard. SIGXCPU at the soft limit names the cause in the output; SIGKILL at the hard
        # one ends a process that ignores it.
        options.append(f"--cpu={limits.cpu_s}:{limits.cpu_s + _CPU_GRACE_S}")
    if limits.memory_bytes:
        options.append(f"--data={limits.memory_bytes}")
    if limits.file_bytes:
        options.append(f"--fsize={limits.file_bytes}")
    if processes and limits.processes:
        options.append(f"--nproc={limits.processes}")
    return [PRLIMIT, *options, "--"]


def nproc_applies() -> bool:
    """The kernel exempts root from RLIMIT_NPROC, even inside a user namespace."""
    return os.geteuid() != 0


def limit_in_output(tail: str) -> str | None:
    """The limit a failed step's output shows it ran into, if any."""
    for name, mark in _MARKS:
        if mark.search(tail):
            return name
    return None
