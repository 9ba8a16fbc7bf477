"""Confinement for every process that runs code the model influenced (the npm install and build).

:func:`sandbox_for` gives the process's sandbox for a :class:`SandboxSettings`, probed once: the
bubblewrap sandbox by default, or, when the operator chose ``RUNFORGE_BUILD_SANDBOX=none``, none.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from app.sandbox.base import SANDBOX_WORKSPACE, Confinement, Jail, Sandbox, SandboxUnavailable
from app.sandbox.bubblewrap import Bubblewrap
from app.sandbox.cgroups import CgroupParents, find_parents
from app.sandbox.report import UNCONFINED_WARNING, banner_line, describe_sandbox
from app.sandbox.settings import SANDBOX_KINDS, SandboxKind, SandboxLimits, SandboxSettings
from app.sandbox.unconfined import Unconfined

__all__ = [
    "SANDBOXES",
    "SANDBOX_KINDS",
    "SANDBOX_WORKSPACE",
    "UNCONFINED_WARNING",
    "Confinement",
    "Jail",
    "Sandbox",
    "SandboxKind",
    "SandboxLimits",
    "SandboxSettings",
    "SandboxUnavailable",
    "banner_line",
    "describe_sandbox",
    "sandbox_for",
]


# RUNFORGE_BUILD_SANDBOX -> how to make it. Another runtime (docs/deploy.md) is added here.
SANDBOXES: dict[str, Callable[[SandboxSettings, CgroupParents | None], Sandbox]] = {
    "bubblewrap": Bubblewrap,
    "none": lambda _settings, cgroups: Unconfined(cgroups),
}


@functools.cache
def sandbox_for(settings: SandboxSettings) -> Sandbox:
    """The sandbox these settings describe, made (and probed: blocking) once per process."""
    return SANDBOXES[settings.kind](settings, find_parents(settings.cgroup))
