"""`runforge` command line: serve, user add, run, templates."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import re
import socket
import sys
from pathlib import Path

import uvicorn

from app.asgi import create_app
from app.presets.commands import check_templates, list_templates, match_template
from app.settings import Settings, SettingsError
from app.store.db import Database
from app.store.repo import Users, hash_token

LOCAL_USER = "local"
LOCAL_TOKEN_FILE = "local-token"


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = Settings.from_env()
    except SettingsError as exc:
        print(f"runforge: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # HTTP clients log every request at INFO: one line per upstream call, and noise in `run`.
    for name in ("httpx", "httpx2"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.command == "serve":
        return serve(settings, args)
    if args.command == "user":
        return asyncio.run(add_user(settings, args.name))
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
    user_cmd = commands.add_parser("user", help="manage users")
    user_sub = user_cmd.add_subparsers(dest="user_command", required=True)
    add_cmd = user_sub.add_parser("add", help="create a user and print its token (last line)")
    add_cmd.add_argument("name")
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
    settings = settings.with_overrides(
        host=args.host or settings.host, port=settings.port if args.port is None else args.port
    )
    token = asyncio.run(_bootstrap_local_user(settings))
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
    logging.getLogger("uvicorn.access").addFilter(RedactSecrets())
    _print_banner(settings, port, token)
    config = uvicorn.Config(
        create_app(settings),
        log_level="info",
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=int(settings.shutdown_grace_s) + 2,
    )
    uvicorn.Server(config).run(sockets=[sock])
    return 0


class RedactSecrets(logging.Filter):
    """Keep login tokens and prompts out of the access log (`/?token=…`, `gen/code?message=…`)."""

    _pattern = re.compile(r"([?&](?:token|message)=)[^&\s]*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._pattern.sub(r"\1[redacted]", a) if isinstance(a, str) else a for a in record.args)
        return True


async def _bootstrap_local_user(settings: Settings) -> str | None:
    """First start: create the `local` user. Returns the local login token if we have it."""
    db = Database(settings.resolved_database_url)
    try:
        await db.create_schema()
        users = Users(db)
        token_file = settings.data_dir / LOCAL_TOKEN_FILE
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


def _print_banner(settings: Settings, port: int, token: str | None) -> None:
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
    if token:
        lines.append(f"Login URL: {url}/?token={token}")
    else:
        lines.append("Login: create a token with `runforge user add NAME`, then open /?token=TOKEN")
    print("\n".join(lines), flush=True)


# -- user add --------------------------------------------------------------------------------


async def add_user(settings: Settings, name: str) -> int:
    name = name.strip()
    if not name or len(name) > 64:
        print("runforge: a user name must be 1-64 characters", file=sys.stderr)
        return 2
    db = Database(settings.resolved_database_url)
    try:
        await db.create_schema()
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
