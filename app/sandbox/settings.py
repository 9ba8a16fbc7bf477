"""What confines code the model wrote: which sandbox, and the limits each confined process lives under."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SandboxKind = Literal["bubblewrap", "none"]
SANDBOX_KINDS: tuple[SandboxKind, ...] = ("bubblewrap", "none")

_MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SandboxLimits:
    """Limits of one sandboxed step (an install or a build). Each one ends the build ``build_limit``.

    0 switches a limit off. Where a limit is per process (the kernel's rlimits) the docstring says so;
    with a cgroup (docs/deploy.md) processes and memory are limits of the whole step.
    """

    cpu_s: int = 600  # CPU seconds, per process
    memory_bytes: int = 2048 * _MIB  # data segment per process; the whole step's with a cgroup
    processes: int = 256  # processes and threads at once
    file_bytes: int = 256 * _MIB  # largest file a process may write
    write_bytes: int = 1024 * _MIB  # how much the workspace may grow during one step
    tmp_bytes: int = 256 * _MIB  # the private /tmp (memory-backed)


@dataclass(frozen=True, slots=True)
class SandboxSettings:
    kind: SandboxKind = "bubblewrap"
    bwrap: str = "bwrap"
    limits: SandboxLimits = field(default_factory=SandboxLimits)
    # "auto": a cgroup per step when the server may make one (root on cgroup v1, or a delegated v2
    # tree); "off": rlimits only; a path: the cgroup v2 directory to make each step's cgroup in.
    cgroup: str = "auto"
    # Extra host paths shown read-only inside (a Node.js installed outside /usr, say).
    runtime_paths: tuple[str, ...] = ()
