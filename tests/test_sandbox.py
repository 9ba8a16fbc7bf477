"""Build scripts the model wrote cannot escape the sandbox: real bubblewrap, real npm and node.

Each test plants a data directory laid out as the server's (a database, the preview-link secret,
another app's workspace) around the attacker's workspace, a canary process standing in for the
server (its environment and working directory hold secrets), a listening port standing in for the
server and the LLM, and the real PostgreSQL and Redis ports. The build script then runs one attack
from tests/sandbox_attacks.js and reports what it got; the test checks what it got and what it
changed on the host. Every one of these fails with ``RUNFORGE_BUILD_SANDBOX=none`` (and the limits
off, for the limit attacks): ``SANDBOX_OFF=1`` runs them that way, to check that they can fail.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.builder import BuildFailed, BuildResult, run_build
from app.control.cancel import StopGate
from app.control.events import BuildEvent
from app.presets import copy_preset, load_catalog
from app.sandbox import SandboxLimits, SandboxSettings, sandbox_for
from app.settings import DEFAULT_TEMPLATES_DIR, BuildSettings, Settings
from tests.process_kit import assert_no_sandbox_left, is_alive, no_process_left, processes_in, sandboxed_processes
from tests.support import ServerThread, collect, gen_url, open_stream

ATTACKS_JS = Path(__file__).with_name("sandbox_attacks.js")
HANG_TIMEOUT_S = 60.0
_MIB = 1024 * 1024
LIMITS = SandboxLimits(processes=96, memory_bytes=512 * _MIB, write_bytes=64 * _MIB)
SANDBOX_OFF = os.environ.get("SANDBOX_OFF") == "1"  # the check that these tests can fail
SANDBOX = (
    SandboxSettings(kind="none", limits=SandboxLimits(0, 0, 0, 0, 0, 0), cgroup="off")
    if SANDBOX_OFF
    else SandboxSettings(limits=LIMITS)
)
SETTINGS = BuildSettings(install_timeout_s=60.0, build_timeout_s=60.0, sandbox=SANDBOX)
LOCAL_SERVICES = {"postgresql": 5432, "redis": 6379}
CANARY = "canary-7f3a"


@dataclass
class Host:
    data_dir: Path
    workspace: Path
    canary: subprocess.Popen[bytes]
    listener: socket.socket
    outside_file: Path
    host_tmp_file: Path

    def build_script(self, attack: str) -> None:
        shutil.copy(ATTACKS_JS, self.workspace / "attacks.js")
        site = "require('fs').mkdirSync(o,{recursive:true});require('fs').writeFileSync(o+'/index.html','ok')"
        write_site = f"node -e \"const o=process.argv[process.argv.indexOf('--outDir')+1];{site}\" --"
        package = {
            "name": "attacker",
            "private": True,
            "scripts": {"build": f"node attacks.js {attack} && {write_site}"},
        }
        (self.workspace / "package.json").write_text(json.dumps(package))

    def report(self, attack: str) -> dict[str, Any]:
        return dict(json.loads((self.workspace / f"attack-{attack}.json").read_text()))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[Host]:
    data_dir = tmp_path / "data"
    workspace = data_dir / "workspaces" / "app-attacker"
    victim = data_dir / "workspaces" / "app-victim"
    for path in (workspace, victim, tmp_path / "server-cwd"):
        path.mkdir(parents=True)
    (data_dir / "runforge.db").write_text(f"SQLite format 3 {CANARY} every user's prompts")
    (data_dir / "preview-key").write_text(f"{CANARY}-preview-secret")
    (victim / "secret.txt").write_text(f"{CANARY} another tenant's code")
    (tmp_path / "server-cwd" / f"{CANARY}.txt").write_text("the server's working directory")
    canary = subprocess.Popen(["sleep", "300"], cwd=tmp_path / "server-cwd", env={"SECRET": CANARY})
    listener = socket.create_server(("127.0.0.1", 0))
    found = Host(data_dir, workspace, canary, listener, tmp_path / "outside.txt", Path(f"/tmp/{CANARY}-{os.getpid()}"))
    targets = {
        "database": str(data_dir / "runforge.db"),
        "previewKey": str(data_dir / "preview-key"),
        "otherApp": victim.name,
        "otherSecret": str(victim / "secret.txt"),
        "workspaces": str(data_dir / "workspaces"),
        "serverPid": canary.pid,
        "home": str(Path.home()),
        "outsideFile": str(found.outside_file),
        "hostTmpFile": str(found.host_tmp_file),
        "ports": {"server": listener.getsockname()[1], **LOCAL_SERVICES},
    }
    (workspace / "targets.json").write_text(json.dumps(targets))
    try:
        yield found
    finally:
        canary.kill()
        canary.wait()
        listener.close()
        for path in written_outside(found):  # only ever there when the sandbox failed (or SANDBOX_OFF)
            path.unlink(missing_ok=True)


@pytest.fixture(autouse=True)
def _no_process_left(tmp_path: Path) -> Iterator[None]:
    yield from no_process_left(tmp_path)


@pytest.fixture(autouse=True)
def _sandbox_works() -> None:
    problem = sandbox_for(SANDBOX).problem()
    assert problem is None, problem  # CI installs bubblewrap (.ci/run): no skipping


async def build(host: Host, attack: str) -> tuple[BuildResult, list[BuildEvent]]:
    host.build_script(attack)
    events: list[BuildEvent] = []
    async with asyncio.timeout(HANG_TIMEOUT_S):
        result = await run_build(host.workspace, SETTINGS, events.append, StopGate())
    return result, events


async def build_fails(host: Host, attack: str) -> BuildFailed:
    with pytest.raises(BuildFailed) as caught:
        await build(host, attack)
    return caught.value


def written_outside(host: Host) -> list[Path]:
    planted = {host.outside_file, host.host_tmp_file, host.data_dir / "escaped.txt", Path("/usr/escaped.txt")}
    return sorted(path for path in planted if path.exists())


def nothing_read(report: dict[str, Any]) -> None:
    leaked = {what: got for what, got in report.items() if CANARY in json.dumps(got)}
    assert leaked == {}


# -- reading what is not the workspace's -----------------------------------------------------


@pytest.mark.parametrize("attack", ["read_database", "read_preview_key", "read_other_workspace"])
async def test_the_data_directory_is_out_of_sight(host: Host, attack: str) -> None:
    await build(host, attack)
    report = host.report(attack)
    nothing_read(report)
    assert not any(got["ok"] for what, got in report.items() if not what.startswith("list_"))
    listings = [got.get("value", "") for what, got in report.items() if what.startswith("list_")]
    assert not any("app-victim" in listing for listing in listings)  # not even the other app's name


async def test_the_server_process_is_out_of_sight_and_reach(host: Host) -> None:
    await build(host, "read_server_process")
    report = host.report("read_server_process")
    nothing_read(report)
    assert not any(got["ok"] for got in report.values()), report
    assert is_alive(host.canary.pid)  # the signal reached nothing


# -- writing outside the workspace ---------------------------------------------------------


async def test_nothing_outside_the_workspace_can_be_written(host: Host) -> None:
    await build(host, "write_outside")
    assert written_outside(host) == []


async def test_a_symlink_to_the_root_leads_only_to_the_sandbox(host: Host) -> None:
    await build(host, "symlink_root")
    report = host.report("symlink_root")
    nothing_read(report)
    assert not host.outside_file.exists()
    assert not host.host_tmp_file.exists()  # written, but to the sandbox's own /tmp
    assert os.readlink(host.workspace / "root") == "/"  # the link itself is the workspace's


# -- network ---------------------------------------------------------------------------------


async def test_no_local_service_can_be_reached(host: Host) -> None:
    await build(host, "connect_local")
    report = host.report("connect_local")
    assert set(report) == {"server", *LOCAL_SERVICES}
    assert {label: got for label, got in report.items() if got["ok"]} == {}


# -- limits ----------------------------------------------------------------------------------


async def test_a_fork_bomb_ends_the_build_at_the_process_limit(host: Host) -> None:
    failure = await build_fails(host, "fork_bomb")
    assert failure.code == "build_limit"
    assert "processes limit" in failure.message
    await assert_no_sandbox_left()


async def test_memory_past_the_limit_ends_the_build(host: Host) -> None:
    failure = await build_fails(host, "allocate")
    assert failure.code == "build_limit", failure.message
    assert failure.code == "build_limit"
    assert "memory limit" in failure.message


async def test_filling_the_disk_ends_the_build_and_gives_the_bytes_back(host: Host) -> None:
    (host.workspace / "dist").mkdir()
    (host.workspace / "dist" / "index.html").write_text("the previous build")
    failure = await build_fails(host, "fill_disk")
    assert failure.code == "build_limit"
    assert "write bytes limit" in failure.message
    assert list(host.workspace.glob("filler-*")) == []
    assert (host.workspace / "dist" / "index.html").read_text() == "the previous build"


async def test_a_daemon_does_not_outlive_the_build(host: Host) -> None:
    result, _ = await build(host, "daemon")
    assert result.out_dir is not None
    assert host.report("daemon")["daemon"]["ok"]
    assert sandboxed_processes() == set()  # the build has returned: its namespace is gone
    assert processes_in(host.workspace) == []  # and nothing unconfined is left working there


# -- through the server: the reproduction --------------------------------------------


async def test_a_prompt_injected_build_gets_nothing_of_the_server(settings: Settings) -> None:
    """A real server builds what the simulated model wrote (scenario build_escape) in its sandbox; the
    owner then downloads the workspace, as an attacker would to collect the loot. It holds nothing
    of the server's: no database, no preview-link secret, no login token, no other app, no process
    of the server's, and no connection to any port the host listens on."""
    builds = BuildSettings(install_timeout_s=120.0, build_timeout_s=60.0, sandbox=SANDBOX)
    server = ServerThread(settings.with_overrides(build=builds)).start()
    try:
        token = server.add_user("mallory")
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=30.0) as client:
            victim = await new_app(client, "victim")
            attacker = await new_app(client, "attacker")
            url = gen_url(attacker, "a portfolio [sim:build_escape]", runId="r-escape")
            async with open_stream(client, "GET", url) as (_, events):
                seen = await collect(events)
            assert seen[-1].event == "done", seen[-1]
            archive = await client.get(f"/apps/{attacker}/download")
        assert archive.status_code == 200
        loot = zipfile.ZipFile(io.BytesIO(archive.content))
        files = {name: loot.read(name) for name in loot.namelist()}
        report = json.loads(files["leak-report.json"])
        secrets = [
            b"SQLite format 3",
            (settings.data_dir / "preview-key").read_bytes().strip(),
            token.encode(),
            f"HOME={Path.home()}".encode(),
        ]
        assert [(name, s) for name, data in files.items() for s in secrets if s in data] == []
        assert report["connected"] == []
        assert victim not in json.dumps(report["listed"])
        assert not any("pyproject.toml" in listing for listing in report["listed"].values())  # the server's cwd
        # Descriptors: the script's stdio pipes and node's own, none of the server's files or sockets.
        assert report["fds"]  # it could look
        assert [fd for fd in report["fds"] if str(settings.data_dir) in fd or "runforge.db" in fd] == []
    finally:
        server.stop()


async def new_app(client: httpx.AsyncClient, name: str) -> str:
    response = await client.post("/apps", json={"name": name, "codeGenType": "vue_project"})
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


# -- the other limits ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("script", "limits", "named"),
    [
        ("for (;;) {}", SandboxLimits(cpu_s=1), "cpu limit (1 CPU seconds per process)"),
        (
            "require('fs').writeFileSync('big.bin', Buffer.alloc(4 * 1024 * 1024))",
            SandboxLimits(file_bytes=_MIB),
            "file size limit (1 MiB per file)",
        ),
    ],
    ids=["cpu", "file_size"],
)
async def test_cpu_time_and_file_size_are_limited(
    tmp_path: Path, script: str, limits: SandboxLimits, named: str
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "package.json").write_text(
        json.dumps({"name": "x", "private": True, "scripts": {"build": "node x.js"}})
    )
    (workspace / "x.js").write_text(script)
    settings = replace(SETTINGS, sandbox=replace(SANDBOX, limits=limits))
    with pytest.raises(BuildFailed) as caught:
        async with asyncio.timeout(HANG_TIMEOUT_S):
            await run_build(workspace, settings, lambda _: None, StopGate())
    assert caught.value.code == "build_limit"
    assert named in caught.value.message
    assert not (workspace / "big.bin").exists() or (workspace / "big.bin").stat().st_size <= _MIB


# -- a real Vue preset, its vite.config.js hostile -----------------------------------------

HOSTILE_VITE_CONFIG = """\
import { defineConfig } from 'vite'
import vue from '@vitejs/plugin-vue'
import fs from 'node:fs'
import net from 'node:net'

// Runs in node when vite loads its config: the build's own code path, not a package.json script.
const targets = JSON.parse(fs.readFileSync('targets.json', 'utf8'))
const report = { read: {}, connected: [] }
for (const file of ['../../runforge.db', targets.database, targets.previewKey, targets.otherSecret]) {
  try { report.read[file] = fs.readFileSync(file, 'utf8') } catch (error) { report.read[file] = 'ERR ' + error.code }
}
await Promise.all(Object.entries(targets.ports).map(([label, port]) => new Promise((resolve) => {
  const socket = net.connect({ host: '127.0.0.1', port, timeout: 2000 })
  socket.on('connect', () => { report.connected.push(label); socket.destroy(); resolve() })
  socket.on('timeout', () => { socket.destroy(); resolve() })
  socket.on('error', () => resolve())
})))
try { fs.writeFileSync(targets.outsideFile, 'escaped') } catch (error) {}
fs.writeFileSync('attack-vite.json', JSON.stringify(report))

export default defineConfig({ base: './', plugins: [vue()] })
"""


async def test_a_real_preset_builds_in_the_sandbox_and_its_vite_config_gets_nothing(host: Host) -> None:
    """The portfolio preset, installed from the registry (no package's scripts) and built by Vite in
    the sandbox, with a vite.config.js that tries to read, connect and write where it may not."""
    if os.environ.get("RUNFORGE_SKIP_NPM_BUILDS") == "1":
        pytest.skip("needs the npm registry (RUNFORGE_SKIP_NPM_BUILDS=1), as tests/test_preset_builds.py")
    preset = next(p for p in load_catalog(DEFAULT_TEMPLATES_DIR).for_type("vue_project") if p.name == "portfolio")
    targets = (host.workspace / "targets.json").read_bytes()
    (host.workspace / "targets.json").unlink()  # copy_preset seeds only an empty workspace
    assert copy_preset(preset, host.workspace, StopGate())
    (host.workspace / "targets.json").write_bytes(targets)
    (host.workspace / "vite.config.js").write_text(HOSTILE_VITE_CONFIG)
    settings = replace(SETTINGS, install_timeout_s=300.0, sandbox=replace(SANDBOX, limits=SandboxLimits()))
    async with asyncio.timeout(360.0):
        result = await run_build(host.workspace, settings, lambda _: None, StopGate())
    assert result.out_dir is not None
    assert (result.out_dir / "index.html").is_file()  # the site built, in the sandbox
    report = json.loads((host.workspace / "attack-vite.json").read_text())
    nothing_read(report)
    assert all(got.startswith("ERR ") for got in report["read"].values()), report["read"]
    assert report["connected"] == []
    assert written_outside(host) == []
