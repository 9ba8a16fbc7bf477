"""The composition root: builds every long-lived part from Settings, and takes it down again."""

from __future__ import annotations

import asyncio
import functools
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio

from app.agent.codegen import CodegenDeps, run_codegen
from app.checkpoints import Checkpoints
from app.cluster import Cluster
from app.cluster.node import new_worker_id
from app.cluster.remote_stops import RemoteStops
from app.control.manager import RunManager
from app.control.pending_stops import PendingStopLimits, PendingStops
from app.control.retention import RetentionLimits
from app.limits import UserLimits
from app.llm.client import LLMClient
from app.metrics import Metrics
from app.presets import Catalog, load_catalog
from app.runs import RunControl
from app.sandbox import UNCONFINED_WARNING, describe_sandbox, sandbox_for
from app.settings import Settings
from app.simulator import SimulatorConfig, SimulatorServer
from app.store.db import Database
from app.store.models import User
from app.store.private import make_private_dir
from app.store.repo import Apps, Runs, Users, Workers, hash_token
from app.wire.sse import encode_event
from app.workspace.preview_links import PreviewLinks

log = logging.getLogger(__name__)

# Users are never deleted and tokens never rotate yet, so a token's user can be cached.
_AUTH_CACHE_SIZE = 1024
CONTROL_POOL_SIZE = 2


@dataclass(slots=True)
class Services:
    settings: Settings
    db: Database
    users: Users
    apps: Apps
    runs: Runs
    manager: RunManager
    llm: LLMClient
    presets: Catalog
    checkpoints: Checkpoints
    preview_links: PreviewLinks
    simulator: SimulatorServer | None
    # Several workers (RUNFORGE_BROKER_URL): this worker's part; None in a single process.
    cluster: Cluster | None
    # Per-user rate limits on starting and stopping runs.
    limits: UserLimits
    # Starting and stopping runs: what every transport calls.
    control: RunControl
    # Set by sse-starlette when the server is asked to exit (SIGTERM/SIGINT).
    shutdown_signal: anyio.Event
    _auth_cache: dict[str, User]
    _auth_lookups: dict[str, asyncio.Future[User | None]]

    @classmethod
    async def start(cls, settings: Settings) -> Services:
        await asyncio.to_thread(make_private_dir, settings.data_dir)
        db = Database(settings.resolved_database_url)
        await db.create_schema()
        worker_id = settings.cluster.worker_id or new_worker_id()
        runs = Runs(db, worker_id, exclusive_apps=settings.cluster.enabled)
        cluster = _cluster(settings, worker_id, runs, db) if settings.cluster.enabled else None
        if cluster is None:
            # One process: whatever a previous one left active died with it. With several
            # workers, the others' runs are alive: lost workers are found by heartbeat instead.
            abandoned = await runs.fail_abandoned()
            if abandoned:
                log.warning("marked %d run(s) left active by a previous process as failed", abandoned)
        simulator = await _start_simulator(settings) if settings.uses_simulator else None
        base_url = simulator.base_url if simulator else str(settings.llm.base_url)
        llm = LLMClient(settings.llm, base_url)
        apps = Apps(db)
        presets = await asyncio.to_thread(load_catalog, settings.templates_dir)
        checkpoints = Checkpoints(settings.checkpoints_dir)
        preview_links = await asyncio.to_thread(PreviewLinks.load, settings.data_dir)
        deps = CodegenDeps(
            llm=llm,
            load_history=apps.history,
            max_steps=settings.max_steps,
            presets=presets,
            checkpoints=checkpoints,
            build=settings.build,
            tool_delay_s=settings.tool_delay_s,
        )
        manager = RunManager(
            runs,
            functools.partial(run_codegen, deps=deps),
            retention=RetentionLimits(
                settings.finished_run_ttl_s,
                settings.max_retained_run_bytes,
                settings.max_retained_bytes,
                settings.max_live_run_bytes,
            ),
            encode=encode_event,
            peers=cluster,
            metrics=Metrics(),
            max_active_per_user=settings.limits.max_active_runs_per_user,
            pending_stops=PendingStops(
                PendingStopLimits(settings.limits.pending_stop_s, settings.limits.pending_stops_per_user)
            ),
        )
        if cluster is not None:
            await cluster.start(manager)
        await asyncio.to_thread(settings.workspaces_dir.mkdir, parents=True, exist_ok=True)
        await _check_sandbox(settings)
        limits = UserLimits(settings.limits)
        control = RunControl(
            manager,
            runs,
            apps,
            limits,
            llm,
            functools.partial(workspace_of, settings),
            peers=RemoteStops(cluster, runs) if cluster is not None else None,
            max_message_chars=settings.max_message_chars,
        )
        return cls(
            settings,
            db,
            Users(db),
            apps,
            runs,
            manager,
            llm,
            presets,
            checkpoints,
            preview_links,
            simulator,
            cluster,
            limits,
            control,
            anyio.Event(),
            {},
            {},
        )

    async def stop(self) -> None:
        await self.manager.shutdown(self.settings.shutdown_grace_s)
        if self.cluster is not None:
            await self.cluster.stop()
        await self.llm.close()
        if self.simulator is not None:
            await asyncio.to_thread(self.simulator.stop)
        await self.db.dispose()

    def sandbox_report(self) -> dict[str, Any]:
        """What confines builds here, for /readyz: the kind, whether it works, how each limit holds."""
        return describe_sandbox(self.settings.build.sandbox)

    def workspace(self, app_id: str) -> Path:
        return workspace_of(self.settings, app_id)

    async def user_for_token(self, token: str) -> User | None:
        key = hash_token(token)  # raw tokens are not kept, not even in memory
        user = self._auth_cache.get(key)
        if user is not None:
            return user
        # One lookup per token at a time: a burst of requests with a new token (hundreds of runs
        # started at once) measured hundreds of identical queries queued for connections.
        lookup = self._auth_lookups.get(key)
        if lookup is None:
            lookup = asyncio.ensure_future(self.users.by_token(token))
            self._auth_lookups[key] = lookup
            lookup.add_done_callback(lambda _: self._auth_lookups.pop(key, None))
        user = await asyncio.shield(lookup)
        if user is not None:
            if len(self._auth_cache) >= _AUTH_CACHE_SIZE:
                self._auth_cache.clear()
            self._auth_cache[key] = user
        return user


def _cluster(settings: Settings, worker_id: str, runs: Runs, db: Database) -> Cluster:
    """This worker's part of the cluster; its loops' database work on two connections of their own."""
    control = Database(settings.resolved_database_url, pool_size=CONTROL_POOL_SIZE)
    return Cluster(
        settings.cluster,
        worker_id,
        runs,
        Workers(control),
        control_runs=Runs(control, worker_id),
        control_db=control,
    )


async def _start_simulator(settings: Settings) -> SimulatorServer:
    server = SimulatorServer(SimulatorConfig(pace_ms=settings.simulator_pace_ms, model=settings.llm.model))
    await asyncio.to_thread(server.start)
    return server


async def _check_sandbox(settings: Settings) -> None:
    """Probe the build sandbox once, at start, and say loudly if builds will not be confined."""
    sandbox = await asyncio.to_thread(sandbox_for, settings.build.sandbox)
    if not settings.build.enabled:
        return
    if sandbox.name == "none":
        log.warning("%s", UNCONFINED_WARNING)
    elif sandbox.problem() is not None:
        log.error("builds will fail (sandbox_unavailable): %s", sandbox.problem())


def workspace_of(settings: Settings, app_id: str) -> Path:
    return settings.workspaces_dir / app_id
