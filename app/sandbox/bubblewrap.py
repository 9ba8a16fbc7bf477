"""The default sandbox: bubblewrap (``bwrap``), unprivileged user, mount, PID, IPC, UTS and network namespaces.

Inside, a step sees the system's runtime read-only (``/usr`` and the few ``/etc`` files that name
resolution and TLS need), its workspace at ``/workspace`` as the only writable place, an empty
private ``/tmp``, a ``/proc`` of its own processes and a minimal ``/dev``. It does not see the data
directory, the database, secrets, other workspaces, the server's home or its processes. Without
network it has only a loopback interface of its own, so no service of the host (PostgreSQL,
Redis, the server, the LLM) can be reached. Its uid inside is not 0, it holds no capabilities,
it may not make user namespaces of its own, and it dies with the server (``--die-with-parent``:
the PID namespace's init dies, and the kernel kills every process in it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from app.sandbox.base import SANDBOX_WORKSPACE, Confinement, SandboxUnavailable
from app.sandbox.cgroups import CgroupParents
from app.sandbox.jail import StepJail, enforcement, limited
from app.sandbox.settings import SandboxSettings

SANDBOX_CACHE = "/cache"
_SANDBOX_UID = "1000"
_SYSTEM_DIRS = ("/usr",)
# Links on merged-/usr systems (Debian 12: /bin -> usr/bin), directories on older ones.
_TOP_LEVEL_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
# Name resolution, TLS roots, and the symlinks /usr/bin points through: nothing else of /etc.
_ETC_FILES = (
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/alternatives",
    "/etc/localtime",
)
_PATH = "/usr/local/bin:/usr/bin:/bin"
_PROBE_TIMEOUT_S = 10.0
_INSTALL_HINT = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap), or set RUNFORGE_BUILD_SANDBOX=none "
    "to run builds unconfined (only where one trusted user uses the server)"
)


class Bubblewrap:
    name = "bubblewrap"

    def __init__(self, settings: SandboxSettings, cgroups: CgroupParents | None) -> None:
        self._settings = settings
        self._cgroups = cgroups
        self._bwrap = shutil.which(settings.bwrap)
        self._runtime = _runtime_paths(settings.runtime_paths)
        self._disable_userns = "--disable-userns" in _bwrap_help(self._bwrap)  # bubblewrap 0.8 and newer
        self._problem = self._probe()

    def problem(self) -> str | None:
        return self._problem

    def enforced_limits(self) -> dict[str, str]:
        return enforcement(self._cgroups, tmpfs=True)

    def confine(self, argv: list[str], spec: Confinement) -> StepJail:
        if self._problem is not None:
            raise SandboxUnavailable(self._problem)
        inner, cgroup = limited(argv, spec.limits, self._cgroups)
        outer = cgroup.join_argv() if cgroup is not None else []
        command = [*outer, *self._base_argv(spec.network), *self._mounts(spec), *self._env(spec), "--", *inner]
        # bwrap's own environment: none (--clearenv above); the step's comes from --setenv.
        return StepJail(command, {}, spec.workspace, cgroup)

    # -- argv ------------------------------------------------------------------------------

    def _base_argv(self, network: bool) -> list[str]:
        assert self._bwrap is not None
        argv = [self._bwrap, "--unshare-all", "--unshare-user", "--die-with-parent", "--new-session"]
        argv += ["--uid", _SANDBOX_UID, "--gid", _SANDBOX_UID, "--hostname", "runforge-sandbox", "--cap-drop", "ALL"]
        argv += ["--disable-userns"] if self._disable_userns else []
        return argv + (["--share-net"] if network else [])

    def _mounts(self, spec: Confinement) -> list[str]:
        args = self._system_mounts()
        args += ["--proc", "/proc", "--dev", "/dev"]
        tmp_bytes = spec.limits.tmp_bytes
        args += (["--size", str(tmp_bytes)] if tmp_bytes else []) + ["--tmpfs", "/tmp"]
        args += ["--bind", str(spec.workspace), SANDBOX_WORKSPACE]
        if spec.cache is not None:
            args += ["--bind", str(spec.cache), SANDBOX_CACHE]
        if ca_file := spec.env.get("NODE_EXTRA_CA_CERTS"):  # the operator's CA, for the install
            args += ["--ro-bind-try", ca_file, ca_file]
        return [*args, "--chdir", SANDBOX_WORKSPACE]

    def _system_mounts(self) -> list[str]:
        args: list[str] = []
        for path in _SYSTEM_DIRS:
            args += ["--ro-bind", path, path]
        for path in _TOP_LEVEL_LINKS:
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        for path in _ETC_FILES:
            args += ["--ro-bind-try", path, path]
        for path in self._runtime:
            args += ["--ro-bind", path, path]
        return args

    def _env(self, spec: Confinement) -> list[str]:
        env = {"PATH": self._path(), "HOME": "/tmp", "TMPDIR": "/tmp", "LANG": "C.UTF-8", **spec.env}
        if spec.cache is not None:
            env["npm_config_cache"] = SANDBOX_CACHE
        args = ["--clearenv"]
        for key, value in env.items():
            args += ["--setenv", key, value]
        return args

    def _path(self) -> str:
        extra = [f"{path}/bin" for path in self._runtime]
        return ":".join([*extra, _PATH])

    # -- availability ----------------------------------------------------------------------

    def _probe(self) -> str | None:
        """Why no step can run here, or None: a real sandbox is started once, at construction."""
        if self._bwrap is None:
            return f"bubblewrap ({self._settings.bwrap!r}) was not found: {_INSTALL_HINT}"
        argv = [*self._base_argv(network=False), *self._system_mounts(), "--proc", "/proc", "--dev", "/dev"]
        try:
            done = subprocess.run(
                [*argv, "--", "/bin/true"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S, env={}
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not start a sandbox ({exc}): {_INSTALL_HINT}"
        if done.returncode != 0:
            reason = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
            return f"bubblewrap could not start a sandbox ({reason}): {_INSTALL_HINT}"
        return None


def _bwrap_help(bwrap: str | None) -> str:
    if bwrap is None:
        return ""
    try:
        return subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""


def _runtime_paths(extra: tuple[str, ...]) -> tuple[str, ...]:
    """Install prefixes of node and npm outside /usr (nvm, /opt), and the operator's extra paths."""
    prefixes: list[str] = []
    for program in ("node", "npm"):
        found = shutil.which(program)
        if found is None:
            continue
        prefix = str(Path(os.path.realpath(found)).parent.parent)
        if prefix != "/usr" and not prefix.startswith("/usr/") and prefix not in prefixes:
            prefixes.append(prefix)
    return tuple(dict.fromkeys([*prefixes, *extra]))
