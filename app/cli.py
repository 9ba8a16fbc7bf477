"""`runforge` command line: serve, user add, db, run, templates."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import uvicorn

from app.cli_db import db_command
from app.http_protocol import AbortingHttpProtocol
from app.logs import configure_logging
from app.presets.commands import check_templates, list_templates, match_template
from app.sandbox import banner_line
from app.settings import ENV_PREFIX, Settings, SettingsError
from app.store.db import Database
from app.store.private import make_private_dir
from app.store.repo import Users, hash_token

LOCAL_USER = "local"
# What each worker process of `serve --workers N` runs: it reads its settings from the environment.
WORKER_APP = "app.asgi:create_app_from_env"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"runforge: {exc}", file=sys.stderr)
        return 2
    configure_logging(settings.log_format)
    if args.command == "serve":
        return serve(settings, args)
    if args.command == "user":
        return asyncio.run(add_user(settings, args.name))
    if args.command == "db":
        return asyncio.run(db_command(settings, args.db_command))
    if args.command == "run":
        from app.cli_run import run_in_terminal

        return run_in_terminal(settings, args)
    if args.command == "templates":
        return templates(settings, args)
    return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="runforge", description="Code-generation agent runtime with run control.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve_cmd = commands.add_parser("serve", help="run the HTTP server")
    serve_cmd.add_argument("--host", help="interface to listen on (RUNFORGE_HOST, default 127.0.0.1)")
    serve_cmd.add_argument("--port", type=int, help="port (RUNFORGE_PORT, default 8000; 0 picks a free one)")
    serve_cmd.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve_cmd.add_argument(
        "--workers",
        type=_positive_int,
        help="worker processes sharing the port (RUNFORGE_WORKERS, default 1); more than 1 needs RUNFORGE_BROKER_URL",
    )
    user_cmd = commands.add_parser("user", help="manage users")
    user_sub = user_cmd.add_subparsers(dest="user_command", required=True)
    add_cmd = user_sub.add_parser("add", help="create a user and print its token (last line)")
    add_cmd.add_argument("name")
    db_cmd = commands.add_parser(
        "db", help="the database schema (RUNFORGE_DATABASE_URL, or the data directory's SQLite)"
    )
    db_sub = db_cmd.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser("upgrade", help="create the schema, or upgrade it to this version's revision")
    db_sub.add_parser("current", help="print the database's revision and this version's; exit 1 unless they match")
    run_cmd = commands.add_parser("run", help="run a prompt against a running server, in the terminal")
    run_cmd.add_argument("prompt")
    run_cmd.add_argument("--app", dest="app_id", help="app id (default: create a new app)")
    run_cmd.add_argument(
        "--type",
        dest="code_gen_type",
        choices=["html", "multi_file", "vue_project"],
        help="generation type of a new app (default: chosen from the prompt)",
    )
    run_cmd.add_argument("--server", help="server URL (default http://RUNFORGE_HOST:RUNFORGE_PORT)")
    run_cmd.add_argument("--token", help="API token (default $RUNFORGE_TOKEN, then the local user's token)")
    templates_cmd = commands.add_parser("templates", help="inspect the presets in RUNFORGE_TEMPLATES_DIR")
    templates_sub = templates_cmd.add_subparsers(dest="templates_command", required=True)
    templates_sub.add_parser("list", help="list presets and their quick-start triggers")
    match_cmd = templates_sub.add_parser("match", help="print the preset a prompt selects: NAME METHOD SCORE, or none")
    match_cmd.add_argument("prompt")
    templates_sub.add_parser("check", help="validate every preset; exit 1 on any problem")
    return parser


def _broker_problem(settings: Settings) -> str | None:
    """Why the broker cannot be used, checked once before any worker starts (each would fail)."""
    url = settings.cluster.broker_url
    if url is None:
        return None
    import redis

    client = redis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=2.0)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"the broker (RUNFORGE_BROKER_URL) is unreachable: {exc}"
    finally:
        client.close()
    return None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# -- templates -----------------------------------------------------------------------------


def templates(settings: Settings, args: argparse.Namespace) -> int:
    root = settings.templates_dir
    if args.templates_command == "list":
        return list_templates(root)
    if args.templates_command == "match":
        return match_template(root, args.prompt)
    return check_templates(root)


# -- serve ---------------------------------------------------------------------------------


def serve(settings: Settings, args: argparse.Namespace) -> int:
    from app.store.schema import SchemaError  # here: Alembic's import is not free (app/store/db.py)

    try:
        workers = _worker_count(args)
    except SettingsError as exc:
        print(f"runforge: {exc}", file=sys.stderr)
        return 2
    if workers > 1 and settings.cluster.worker_id is not None:
        print(
            f"runforge: RUNFORGE_WORKER_ID names one worker, and {workers} workers cannot share it "
            "(each would take the others' runs for its own lost ones). Unset it: each worker then "
            "gets <host>-<pid>-<random>.",
            file=sys.stderr,
        )
        return 2
    if workers > 1 and not settings.cluster.enabled:
        print(
            f"runforge: {workers} workers need a broker: set RUNFORGE_BROKER_URL (redis://host:port/db). "
            "A run lives in the worker process that started it, and a stop, a stream join or a replay "
            "that lands on another worker can reach it only through the broker. Without one, run one "
            "worker (--workers 1).",
            file=sys.stderr,
        )
        return 2
    settings = settings.with_overrides(
        host=args.host or settings.host, port=settings.port if args.port is None else args.port
    )
    try:
        token = asyncio.run(_bootstrap_local_user(settings))
    except SchemaError as exc:
        print(f"runforge: {exc}", file=sys.stderr)
        return 1
    broker_problem = _broker_problem(settings)
    if broker_problem:
        print(f"runforge: {broker_problem}", file=sys.stderr)
        return 1
    # An explicit IPPROTO_TCP makes asyncio set TCP_NODELAY on accepted connections.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        print(f"runforge: cannot listen on {settings.host}:{settings.port}: {exc.strerror}", file=sys.stderr)
        return 1
    sock.listen(2048)  # connections made after the banner queue until uvicorn accepts them
    port = sock.getsockname()[1]
    _print_banner(settings, port, token, workers)
    timeout_graceful_shutdown = int(settings.shutdown_grace_s) + 2
    if workers > 1:
        return _serve_workers(
            workers, sock, access_log=not args.no_access_log, timeout=timeout_graceful_shutdown, settings=settings
        )
    # Imported here: the app (litestar, openai, ...) takes ~0.9 s to import, which the other
    # commands, and the supervisor of several workers, need not pay.
    from app.asgi import create_app

    config = uvicorn.Config(
        create_app(settings),
        log_level="info",
        log_config=_uvicorn_log_config(settings),
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=timeout_graceful_shutdown,
        http=AbortingHttpProtocol,
    )
    # Ctrl-C: uvicorn shuts down gracefully, then re-raises SIGINT. Nothing went wrong: exit 0.
    with contextlib.suppress(KeyboardInterrupt):
        uvicorn.Server(config).run(sockets=[sock])
    return 0


def _worker_count(args: argparse.Namespace) -> int:
    if args.workers is not None:
        return int(args.workers)
    raw = os.environ.get(f"{ENV_PREFIX}WORKERS") or "1"
    try:
        return _positive_int(raw)
    except argparse.ArgumentTypeError as exc:
        raise SettingsError(f"{ENV_PREFIX}WORKERS {exc}") from None


def _uvicorn_log_config(settings: Settings) -> dict[str, Any] | None:
    """uvicorn's own format, or (JSON logs) none: its lines then go through ours (app/logs.py)."""
    return None if settings.log_format == "json" else uvicorn.config.LOGGING_CONFIG


def _serve_workers(workers: int, sock: socket.socket, *, access_log: bool, timeout: int, settings: Settings) -> int:
    """uvicorn's supervisor: `workers` processes accepting on our socket, restarted if one dies.

    Each worker is a new process (multiprocessing's spawn): it builds its app with
    ``create_app_from_env``, from the environment this process was started with. The socket is
    already bound, so --host/--port need not reach them. SIGTERM or SIGINT here stops every worker
    gracefully (SIGTERM to each, then wait); SIGHUP replaces them one by one, SIGTTIN/SIGTTOU add
    or remove one.
    """
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors import Multiprocess

    config = uvicorn.Config(
        WORKER_APP,
        factory=True,
        workers=workers,
        log_level="info",
        log_config=_uvicorn_log_config(settings),
        access_log=access_log,
        timeout_graceful_shutdown=timeout,
        http=AbortingHttpProtocol,
    )
    supervisor = Multiprocess(config, sockets=[sock])
    supervisor.run()
    if any(process.exitcode == STARTUP_FAILURE for process in supervisor.processes):
        # uvicorn stops them all when one cannot start: it would fail the same way again.
        print("runforge: a worker process failed to start (its log is above); stopped the others", file=sys.stderr)
        return 1
    return 0


async def _bootstrap_local_user(settings: Settings) -> str | None:
    """First start: create the `local` user. Returns the local login token if we have it."""
    await asyncio.to_thread(make_private_dir, settings.data_dir)
    db = Database(settings.resolved_database_url)
    try:
        await db.create_schema()
        users = Users(db)
        token_file = settings.local_token_file
        if await users.count() == 0:
            _, token = await users.create(LOCAL_USER)
            await asyncio.to_thread(_write_private, token_file, token)
            return token
        return await _saved_local_token(users, token_file)
    finally:
        await db.dispose()


async def _saved_local_token(users: Users, token_file: Path) -> str | None:
    try:
        token = (await asyncio.to_thread(token_file.read_text)).strip()
    except OSError:
        return None
    user = await users.by_name(LOCAL_USER)
    return token if user is not None and user.token_hash == hash_token(token) else None


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")


def _print_banner(settings: Settings, port: int, token: str | None, workers: int = 1) -> None:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    url = f"http://{host}:{port}"
    if settings.uses_simulator:
        llm = "embedded simulator (RUNFORGE_LLM_BASE_URL is not set): scripted answers, no real model"
    else:
        llm = f"{settings.llm.base_url} (model {settings.llm.model})"
    lines = [
        f"Runforge listening on {url}",
        f"LLM: {llm}",
        f"OpenAI-compatible API: {url}/v1 (API key: a Runforge token)",
        f"Data: {settings.data_dir.resolve()}",
    ]
    if settings.build.enabled:
        lines.append(banner_line(settings.build.sandbox))
    if workers > 1:
        lines.append(f"Workers: {workers} (broker {_redact_url(str(settings.cluster.broker_url))})")
    if token:
        lines.append(f"Login URL: {url}/?token={token}")
    else:
        lines.append("Login: create a token with `runforge user add NAME`, then open /?token=TOKEN")
    print("\n".join(lines), flush=True)


def _redact_url(url: str) -> str:
    """The URL with its password, if any, replaced: banners end up in logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or ''}:***@{host}"))


# -- user add --------------------------------------------------------------------------------


async def add_user(settings: Settings, name: str) -> int:
    name = name.strip()
    if not name or len(name) > 64:
        print("runforge: a user name must be 1-64 characters", file=sys.stderr)
        return 2
    from app.store.schema import SchemaError  # here: Alembic's import is not free (app/store/db.py)

    db = Database(settings.resolved_database_url)
    try:
        try:
            await db.create_schema()
        except SchemaError as exc:
            print(f"runforge: {exc}", file=sys.stderr)
            return 1
        users = Users(db)
        if await users.by_name(name) is not None:
            print(f"runforge: user {name!r} already exists", file=sys.stderr)
            return 1
        _, token = await users.create(name)
    finally:
        await db.dispose()
    print(f"created user {name}; its token (shown once):")
    print(token)
    return 0
