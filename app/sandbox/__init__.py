"""Confinement for every process that runs code the model influenced (the npm install and build).

:func:`sandbox_for` gives the process's sandbox for a :class:`SandboxSettings`, probed once: the
bubblewrap sandbox by default, or, when the operator chose ``RUNFORGE_BUILD_SANDBOX=none``, none.
"""

from __future__ import annotations

import functools

from app.sandbox.base import SANDBOX_WORKSPACE, Confinement, Jail, Sandbox, SandboxUnavailable
from app.sandbox.bubblewrap import Bubblewrap
from app.sandbox.cgroups import find_parents
from app.sandbox.report import UNCONFINED_WARNING, banner_line, describe_sandbox
from app.sandbox.settings import SANDBOX_KINDS, SandboxKind, SandboxLimits, SandboxSettings
from app.sandbox.unconfined import Unconfined

__all__ = [
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


@functools.cache
def sandbox_for(settings: SandboxSettings) -> Sandbox:
    """The sandbox these settings describe, made (and probed: blocking) once per process."""
    cgroups = find_parents(settings.cgroup)
    if settings.kind == "none":
        return Unconfined(cgroups)
    return Bubblewrap(settings, cgroups)
