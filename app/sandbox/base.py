"""The interface between a step that runs model-influenced code and whatever confines it.

A :class:`Sandbox` turns a :class:`Confinement` (what the step may see and reach) into a
:class:`Jail`: the argv, environment and working directory to spawn, plus what to do afterwards.
The build runner spawns ``jail.argv`` in its own session and kills that group as before; the
sandbox only decides what the processes inside can see. Another runtime (a container runtime,
a microVM) plugs in by implementing these two protocols (docs/deploy.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from app.sandbox.settings import SandboxLimits

# Where the workspace appears inside a sandbox: host paths never reach the build's output.
SANDBOX_WORKSPACE = "/workspace"


class SandboxUnavailable(Exception):
    """No sandbox can run here, and the operator did not choose to run builds unconfined."""


@dataclass(frozen=True, slots=True)
class Confinement:
    workspace: Path  # the only writable place (besides a private /tmp)
    network: bool  # False: no network at all, not even loopback services of the host
    env: dict[str, str]  # the step's own variables; the sandbox adds PATH, HOME and the like
    # A host directory the step may also write, for its downloads (npm_config_cache points to it).
    cache: Path | None = None
    limits: SandboxLimits = field(default_factory=SandboxLimits)


class Jail(Protocol):
    """One confined step, ready to spawn."""

    argv: list[str]
    env: dict[str, str]
    cwd: Path

    def limit_hit(self) -> str | None:
        """After the step: the limit that ended it ("processes", "memory"), if the jail knows one."""
        ...

    def close(self) -> None:
        """Kill whatever is left inside and release the jail's resources (blocking: run in a thread)."""
        ...


class Sandbox(Protocol):
    name: str

    def problem(self) -> str | None:
        """None when steps can run; otherwise why not, in words an operator can act on."""
        ...

    def enforced_limits(self) -> dict[str, str]:
        """Each limit and how it is enforced here ("cgroup", "rlimit", "watchdog", "none")."""
        ...

    def confine(self, argv: list[str], spec: Confinement) -> Jail:
        """Make the jail for one step (blocking: run in a thread). Raises SandboxUnavailable."""
        ...
