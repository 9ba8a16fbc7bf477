"""``RUNFORGE_BUILD_SANDBOX=none``: steps run as the server's own user, seeing all it sees.

Only for one trusted user on their own machine: a build script the model wrote can then read the
database, the preview-link secret and every other app, and reach every local service. The banner
and /readyz say so. The limits still apply (rlimits, a cgroup where one can be made, the watchdog);
the environment is still scrubbed to what npm needs.
"""

from __future__ import annotations

import os

from app.sandbox.base import Confinement
from app.sandbox.cgroups import CgroupParents
from app.sandbox.jail import StepJail, enforcement, limited

# What npm and node need from the server's environment; nothing else (API keys, database URLs).
_INHERITED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "USER", "SHELL", "NODE_EXTRA_CA_CERTS")


class Unconfined:
    name = "none"

    def __init__(self, cgroups: CgroupParents | None) -> None:
        self._cgroups = cgroups

    def problem(self) -> str | None:
        return None

    def enforced_limits(self) -> dict[str, str]:
        return enforcement(self._cgroups, tmpfs=False)

    def confine(self, argv: list[str], spec: Confinement) -> StepJail:
        inner, cgroup = limited(argv, spec.limits, self._cgroups)
        outer = cgroup.join_argv() if cgroup is not None else []
        env = {key: value for key, value in os.environ.items() if key in _INHERITED_ENV}
        cache = {"npm_config_cache": str(spec.cache)} if spec.cache is not None else {}
        return StepJail([*outer, *inner], {**env, **spec.env, **cache}, spec.workspace, cgroup)
