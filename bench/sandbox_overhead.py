"""What the build sandbox costs: the same commands unconfined and in the sandbox, spawned as builds are.

Three commands, each run ``--rounds`` times per way, alternating ways so that the machine's drift
falls on both: ``/bin/true`` (the sandbox's own start-up: namespaces, mounts, cgroup, prlimit),
``node -e 0`` (what every build script pays at least), and ``npm run build`` of the portfolio
preset (a real Vite build; installed once beforehand, outside the timing). Each spawn goes through
the same ``Sandbox.confine`` the build runner uses, and the jail is closed after each (the cgroup
removed), which is timed too. Prints medians and p90 in ms, and the machine.

    .venv/bin/python bench/sandbox_overhead.py [--rounds 30] [--build-rounds 5]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.control.cancel import StopGate  # noqa: E402
from app.presets import copy_preset, load_catalog  # noqa: E402
from app.sandbox import Confinement, SandboxLimits, SandboxSettings, sandbox_for  # noqa: E402
from app.settings import DEFAULT_TEMPLATES_DIR  # noqa: E402

WAYS = {
    "unconfined": SandboxSettings(kind="none", cgroup="off", limits=SandboxLimits(0, 0, 0, 0, 0, 0)),
    # The limits without the confinement: what the cgroup and prlimit cost on their own.
    "limits only": SandboxSettings(kind="none"),
    "sandbox": SandboxSettings(),
}
ENV = {"CI": "1", "NO_COLOR": "1", "npm_config_update_notifier": "false"}


def timed(way: str, argv: list[str], workspace: Path, *, network: bool = False) -> float:
    sandbox = sandbox_for(WAYS[way])
    started = time.perf_counter()
    jail = sandbox.confine(argv, Confinement(workspace, network, ENV, limits=WAYS[way].limits))
    try:
        done = subprocess.run(jail.argv, env=jail.env, cwd=jail.cwd, capture_output=True, start_new_session=True)
    finally:
        jail.close()
    elapsed = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{way}: {argv} exited {done.returncode}: {done.stdout[-2000:]!r} {done.stderr[-2000:]!r}")
    return elapsed


def measure(label: str, argv: list[str], workspace: Path, rounds: int) -> None:
    samples: dict[str, list[float]] = {way: [] for way in WAYS}
    for _ in range(rounds):
        for way in WAYS:
            samples[way].append(timed(way, argv, workspace))
    for way, values in samples.items():
        values.sort()
        p90 = values[min(len(values) - 1, int(len(values) * 0.9))]
        print(f"{label:<22} {way:<11} median {statistics.median(values):8.1f} ms   p90 {p90:8.1f} ms   n={rounds}")
    extra = statistics.median(samples["sandbox"]) - statistics.median(samples["unconfined"])
    print(f"{label:<22} sandbox overhead (median): {extra:+.1f} ms")


def portfolio(root: Path) -> Path:
    preset = next(p for p in load_catalog(DEFAULT_TEMPLATES_DIR).for_type("vue_project") if p.name == "portfolio")
    workspace = root / "portfolio"
    copy_preset(preset, workspace, StopGate())
    install = ["npm", "install", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"]
    cache = Path.home() / ".npm"
    sandbox = sandbox_for(WAYS["sandbox"])
    jail = sandbox.confine(install, Confinement(workspace, True, ENV, cache=cache, limits=WAYS["sandbox"].limits))
    try:
        subprocess.run(jail.argv, env=jail.env, cwd=jail.cwd, check=True, capture_output=True)
    finally:
        jail.close()
    return workspace


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--build-rounds", type=int, default=5)
    args = parser.parse_args()
    problem = sandbox_for(WAYS["sandbox"]).problem()
    if problem:
        raise SystemExit(problem)
    python = platform.python_version()
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, Python {python}")
    print(f"sandbox limits here: {sandbox_for(WAYS['sandbox']).enforced_limits()}")
    root = Path(tempfile.mkdtemp(prefix="runforge-sandbox-bench-"))
    try:
        measure("/bin/true", ["/bin/true"], root, args.rounds)
        measure("node -e 0", ["node", "-e", "0"], root, args.rounds)
        workspace = portfolio(root)
        out = ["npm", "run", "build", "--", "--outDir", "bench-out", "--emptyOutDir"]
        measure("npm run build (Vite)", out, workspace, args.build_rounds)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
