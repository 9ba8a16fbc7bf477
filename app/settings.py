"""Typed settings. Read from the environment once, by the CLI, and passed into create_app()."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from app.logs import LOG_FORMATS
from app.sandbox import SANDBOX_KINDS, SandboxLimits, SandboxSettings

ENV_PREFIX = "RUNFORGE_"
# The presets shipped with the repository (app/settings.py -> repo root / templates).
DEFAULT_TEMPLATES_DIR = Path(__file__).resolve().parents[1] / "templates"
_MIB = 1024 * 1024


class SettingsError(ValueError):
    """A configuration value is missing or malformed."""


@dataclass(frozen=True, slots=True)
class BuildSettings:
    """How the build after a vue_project run goes (app/builder)."""

    enabled: bool = True
    npm: str = "npm"
    install_timeout_s: float = 600.0
    build_timeout_s: float = 300.0
    tail_lines: int = 40  # lines of log kept for the failure message
    max_line_chars: int = 2000  # longer output lines are cut
    sandbox: SandboxSettings = field(default_factory=SandboxSettings)
    # The install's download cache; None: npm's own default for the server's user (~/.npm).
    npm_cache: Path | None = None


@dataclass(frozen=True, slots=True)
class LLMSettings:
    # None means: start the embedded simulator and use it.
    base_url: str | None = None
    api_key: str = "sim"
    model: str = "runforge-sim"
    max_retries: int = 2
    timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Several workers sharing one database and a Redis broker (app/cluster, docs/deploy.md)."""

    # None: one process, run control in memory (the default). redis://host:port/db switches it on.
    broker_url: str | None = None
    # Every Redis key and channel starts with this: deployments can share one Redis.
    prefix: str = "runforge"
    # This process's id in `runs.owner_worker` and `workers`; None: host-pid-random.
    worker_id: str | None = None
    # Seconds between heartbeats; a worker silent for worker_timeout_s is lost, and its runs fail.
    heartbeat_s: float = 1.0
    worker_timeout_s: float = 10.0
    # Seconds between re-reads of this worker's runs in the database (stops a lost message missed).
    reconcile_s: float = 2.0
    # How long a finished run's event stream stays in Redis for joins and replays.
    stream_ttl_s: float = 3600.0

    @property
    def enabled(self) -> bool:
        return self.broker_url is not None


@dataclass(frozen=True, slots=True)
class LimitSettings:
    # Runs (code runs and /v1 requests) a user may have active at once in one process; 0: no limit.
    max_active_runs_per_user: int = 32
    # Run starts (gen/code, WebSocket REQUEST, /v1/chat/completions) per user per minute; 0: no limit.
    gen_per_minute: int = 120
    # Stop requests (chat/stop, runs/{id}/stop, /v1/interrupt, WebSocket INTERRUPT) per user per minute.
    stops_per_minute: int = 600
    # A stop for a run id not started yet is remembered this long, for the user's start with that id
    # (app/control/pending_stops.py); a user's oldest goes past this many.
    pending_stop_s: float = 30.0
    pending_stops_per_user: int = 100


@dataclass(frozen=True, slots=True)
class Settings:
    data_dir: Path = Path("runs")
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    llm: LLMSettings = field(default_factory=LLMSettings)
    max_steps: int = 20
    # Pace of the embedded simulator, per token.
    simulator_pace_ms: float = 15.0
    # Longest prompt accepted from a user, in characters.
    max_message_chars: int = 20_000
    # Largest request body, in bytes: every endpoint but /v1/chat/completions, then that one
    # (it carries whole conversations, sometimes images). Past them: 413.
    max_body_bytes: int = 1024 * 1024
    max_chat_body_bytes: int = 8 * 1024 * 1024
    # How long a finished run's events stay in memory for `/runs/{id}/events` replays; a run whose
    # events are over max_retained_run_bytes is not kept, and all kept runs stay under
    # max_retained_bytes (oldest first). A run not kept replays its terminal event from its row.
    finished_run_ttl_s: float = 600.0
    max_retained_run_bytes: int = 16 * 1024 * 1024
    max_retained_bytes: int = 256 * 1024 * 1024
    # What a live run holds of its events: past it the oldest a client has read are let go, and a
    # joiner from before them starts at the oldest held (app/control/run.py, EventLog).
    max_live_run_bytes: int = 64 * 1024 * 1024
    # Seconds between SSE keepalive comments.
    sse_ping_s: float = 15.0
    # A client that does not take a write (an SSE piece, a /v1 chunk, a WebSocket message) within
    # this long once its connection's buffers are full is disconnected, and its memory freed.
    send_timeout_s: float = 30.0
    # How long shutdown waits for runs to record their interruption.
    shutdown_grace_s: float = 3.0
    # Freeze start-up objects out of the garbage collector. Process-wide: right for a server
    # process, wrong for an app embedded many times in one process (tests turn it off).
    gc_freeze: bool = True
    # Starter projects a run may copy into an empty workspace (app/presets).
    templates_dir: Path = DEFAULT_TEMPLATES_DIR
    # npm install / npm run build after a vue_project run (RUNFORGE_BUILD=0 turns it off).
    build: BuildSettings = field(default_factory=BuildSettings)
    # Fault injection: every tool call takes at least this long (tests of stop modes, demos).
    tool_delay_s: float = 0.0
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    # "text" (the default) or "json": one JSON object a line (app/logs.py).
    log_format: str = "text"
    # Per-user limits on runs (app/limits.py).
    limits: LimitSettings = field(default_factory=LimitSettings)
    # Origins whose pages may call the API from a browser (CORS); none by default.
    cors_origins: tuple[str, ...] = ()

    @property
    def workspaces_dir(self) -> Path:
        return self.data_dir / "workspaces"

    @property
    def local_token_file(self) -> Path:
        """The `local` user's token, written at the first start (read by `runforge run`)."""
        return self.data_dir / "local-token"

    @property
    def checkpoints_dir(self) -> Path:
        """One git repository per app, outside the workspaces the model writes to."""
        return self.data_dir / "checkpoints"

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'runforge.db').resolve()}"

    @property
    def uses_simulator(self) -> bool:
        return self.llm.base_url is None

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ

        def get(name: str) -> str | None:
            value = env.get(ENV_PREFIX + name)
            return value if value not in (None, "") else None

        defaults = cls()
        llm_defaults = LLMSettings()
        base_url = get("LLM_BASE_URL")
        llm = LLMSettings(
            base_url=base_url,
            api_key=get("LLM_API_KEY") or ("sim" if base_url is None else ""),
            model=get("LLM_MODEL") or llm_defaults.model,
            max_retries=_int(get("LLM_MAX_RETRIES"), "LLM_MAX_RETRIES", llm_defaults.max_retries),
            timeout_s=_float(get("LLM_TIMEOUT_S"), "LLM_TIMEOUT_S", llm_defaults.timeout_s),
        )
        return cls(
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
            database_url=get("DATABASE_URL"),
            host=get("HOST") or defaults.host,
            port=_int(get("PORT"), "PORT", defaults.port),
            llm=llm,
            max_steps=_int(get("MAX_STEPS"), "MAX_STEPS", defaults.max_steps, minimum=1),
            simulator_pace_ms=_float(get("SIM_PACE_MS"), "SIM_PACE_MS", defaults.simulator_pace_ms),
            max_message_chars=_int(get("MAX_MESSAGE_CHARS"), "MAX_MESSAGE_CHARS", defaults.max_message_chars),
            max_body_bytes=_int(get("MAX_BODY_BYTES"), "MAX_BODY_BYTES", defaults.max_body_bytes, minimum=1024),
            max_chat_body_bytes=_int(
                get("MAX_CHAT_BODY_BYTES"), "MAX_CHAT_BODY_BYTES", defaults.max_chat_body_bytes, minimum=1024
            ),
            templates_dir=Path(get("TEMPLATES_DIR") or defaults.templates_dir),
            build=_build_settings(get),
            tool_delay_s=_float(get("TOOL_DELAY_MS"), "TOOL_DELAY_MS", 0.0) / 1000,
            finished_run_ttl_s=_float(get("FINISHED_RUN_TTL_S"), "FINISHED_RUN_TTL_S", defaults.finished_run_ttl_s),
            send_timeout_s=_float(get("SEND_TIMEOUT_S"), "SEND_TIMEOUT_S", defaults.send_timeout_s),
            max_retained_run_bytes=_int(
                get("MAX_RETAINED_RUN_BYTES"), "MAX_RETAINED_RUN_BYTES", defaults.max_retained_run_bytes, minimum=0
            ),
            max_retained_bytes=_int(
                get("MAX_RETAINED_BYTES"), "MAX_RETAINED_BYTES", defaults.max_retained_bytes, minimum=0
            ),
            max_live_run_bytes=_int(
                get("MAX_LIVE_RUN_BYTES"), "MAX_LIVE_RUN_BYTES", defaults.max_live_run_bytes, minimum=1024
            ),
            cluster=_cluster_settings(get),
            log_format=_choice(get("LOG_FORMAT"), "LOG_FORMAT", LOG_FORMATS, defaults.log_format),
            limits=_limit_settings(get),
            cors_origins=_origins(get("CORS_ORIGINS")),
        )


def _limit_settings(get: Callable[[str], str | None]) -> LimitSettings:
    defaults = LimitSettings()
    return LimitSettings(
        max_active_runs_per_user=_int(
            get("MAX_RUNS_PER_USER"), "MAX_RUNS_PER_USER", defaults.max_active_runs_per_user, minimum=0
        ),
        gen_per_minute=_int(get("GEN_PER_MINUTE"), "GEN_PER_MINUTE", defaults.gen_per_minute, minimum=0),
        stops_per_minute=_int(get("STOPS_PER_MINUTE"), "STOPS_PER_MINUTE", defaults.stops_per_minute, minimum=0),
        pending_stop_s=_float(get("PENDING_STOP_S"), "PENDING_STOP_S", defaults.pending_stop_s),
        pending_stops_per_user=_int(
            get("PENDING_STOPS_PER_USER"), "PENDING_STOPS_PER_USER", defaults.pending_stops_per_user, minimum=1
        ),
    )


def _origins(value: str | None) -> tuple[str, ...]:
    """A comma-separated list of origins (scheme://host[:port]); '*' allows any."""
    if value is None:
        return ()
    origins = tuple(origin.strip().rstrip("/") for origin in value.split(",") if origin.strip())
    for origin in origins:
        if origin != "*" and not origin.startswith(("http://", "https://")):
            raise SettingsError(f"{ENV_PREFIX}CORS_ORIGINS: {origin!r} is not an origin like https://ide.example")
    return origins


def _choice(value: str | None, name: str, choices: Sequence[str], default: str) -> str:
    if value is None:
        return default
    if value not in choices:
        raise SettingsError(f"{ENV_PREFIX}{name} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _cluster_settings(get: Callable[[str], str | None]) -> ClusterSettings:
    defaults = ClusterSettings()
    broker_url = get("BROKER_URL")
    if broker_url is not None and not broker_url.startswith(("redis://", "rediss://", "unix://")):
        raise SettingsError(
            f"{ENV_PREFIX}BROKER_URL must be a redis:// (or rediss://, unix://) URL, got {broker_url!r}"
        )
    heartbeat_s = _float(get("HEARTBEAT_S"), "HEARTBEAT_S", defaults.heartbeat_s)
    worker_timeout_s = _float(get("WORKER_TIMEOUT_S"), "WORKER_TIMEOUT_S", defaults.worker_timeout_s)
    if worker_timeout_s <= 2 * heartbeat_s:
        raise SettingsError(
            f"{ENV_PREFIX}WORKER_TIMEOUT_S ({worker_timeout_s}) must be more than twice "
            f"{ENV_PREFIX}HEARTBEAT_S ({heartbeat_s}): one late heartbeat must not lose a worker"
        )
    return ClusterSettings(
        broker_url=broker_url,
        prefix=get("BROKER_PREFIX") or defaults.prefix,
        worker_id=get("WORKER_ID"),
        heartbeat_s=heartbeat_s,
        worker_timeout_s=worker_timeout_s,
        reconcile_s=_float(get("RECONCILE_S"), "RECONCILE_S", defaults.reconcile_s),
        stream_ttl_s=_float(get("STREAM_TTL_S"), "STREAM_TTL_S", defaults.stream_ttl_s),
    )


def _build_settings(get: Callable[[str], str | None]) -> BuildSettings:
    defaults = BuildSettings()
    enabled = get("BUILD")
    if enabled not in (None, "0", "1"):
        raise SettingsError(f"{ENV_PREFIX}BUILD must be 0 or 1, got {enabled!r}")
    npm_cache = get("NPM_CACHE")
    return BuildSettings(
        enabled=enabled != "0",
        npm=get("NPM") or defaults.npm,
        install_timeout_s=_float(get("INSTALL_TIMEOUT_S"), "INSTALL_TIMEOUT_S", defaults.install_timeout_s),
        build_timeout_s=_float(get("BUILD_TIMEOUT_S"), "BUILD_TIMEOUT_S", defaults.build_timeout_s),
        sandbox=_sandbox_settings(get),
        npm_cache=Path(npm_cache) if npm_cache else None,
    )


def _sandbox_settings(get: Callable[[str], str | None]) -> SandboxSettings:
    defaults = SandboxSettings()
    kind = _choice(get("BUILD_SANDBOX"), "BUILD_SANDBOX", SANDBOX_KINDS, defaults.kind)
    paths = tuple(path for path in (get("SANDBOX_RO_PATHS") or "").split(":") if path)
    for path in paths:
        if not path.startswith("/"):
            raise SettingsError(f"{ENV_PREFIX}SANDBOX_RO_PATHS: {path!r} is not an absolute path")
    return SandboxSettings(
        kind=kind,  # type: ignore[arg-type]  # checked against SANDBOX_KINDS
        bwrap=get("BWRAP") or defaults.bwrap,
        limits=_sandbox_limits(get),
        cgroup=get("BUILD_CGROUP") or defaults.cgroup,
        runtime_paths=paths,
    )


def _sandbox_limits(get: Callable[[str], str | None]) -> SandboxLimits:
    defaults = SandboxLimits()

    def mib(name: str, default: int) -> int:
        return _int(get(name), name, default // _MIB) * _MIB

    return SandboxLimits(
        cpu_s=_int(get("BUILD_CPU_S"), "BUILD_CPU_S", defaults.cpu_s),
        memory_bytes=mib("BUILD_MEMORY_MB", defaults.memory_bytes),
        processes=_int(get("BUILD_MAX_PROCS"), "BUILD_MAX_PROCS", defaults.processes),
        file_bytes=mib("BUILD_MAX_FILE_MB", defaults.file_bytes),
        write_bytes=mib("BUILD_MAX_WRITE_MB", defaults.write_bytes),
        tmp_bytes=mib("BUILD_TMP_MB", defaults.tmp_bytes),
    )


def _int(raw: str | None, name: str, default: int, minimum: int = 0) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name} must be an integer, got {raw!r}") from None
    if value < minimum:
        raise SettingsError(f"{ENV_PREFIX}{name} must be at least {minimum}, got {value}")
    return value


def _float(raw: str | None, name: str, default: float) -> float:
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SettingsError(f"{ENV_PREFIX}{name} must be a number, got {raw!r}") from None
    if value < 0:
        raise SettingsError(f"{ENV_PREFIX}{name} must not be negative, got {value}")
    return value
