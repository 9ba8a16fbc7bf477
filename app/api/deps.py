"""Dependencies shared by the handlers: services, the signed-in user, ownership checks."""

from __future__ import annotations

from typing import Any, TypeAlias, overload

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.control.run import RUN_ID_PATTERN
from app.errors import BadRequest, Forbidden, NotFound, Unauthorized
from app.services import Services
from app.store.models import App, User

# Handler parameter types: injected by name ("services", "user"), declared explicitly.
ServicesDep: TypeAlias = NamedDependency[Services]
CurrentUser: TypeAlias = NamedDependency[User]

TOKEN_COOKIE = "runforge_token"


def provide_services(state: State) -> Services:
    services: Services = state.services
    return services


def bearer_token(connection: ASGIConnection[Any, Any, Any, Any]) -> str | None:
    header = connection.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return connection.cookies.get(TOKEN_COOKIE) or None


async def provide_user(request: Request[Any, Any, Any], services: ServicesDep) -> User:
    token = bearer_token(request)
    if token is None:
        raise Unauthorized("sign in: send 'Authorization: Bearer <token>' or open /?token=<token>")
    user = await services.user_for_token(token)
    if user is None:
        raise Unauthorized("the token is not valid", code="invalid_token")
    return user


@overload
def without_nul(text: str) -> str: ...
@overload
def without_nul(text: None) -> None: ...
def without_nul(text: str | None) -> str | None:
    """User text as it is stored: without NUL characters, which PostgreSQL's text type refuses
    and which mean nothing in a prompt or a name (as surrounding whitespace, they are dropped)."""
    return text.replace("\x00", "") if text is not None else None


async def owned_app(services: Services, user: User, app_id: str) -> App:
    app = await services.apps.get(app_id)
    if app is None:
        raise NotFound(f"no app {app_id!r}", code="app_not_found")
    if app.owner_id != user.id:
        raise Forbidden(f"app {app_id!r} belongs to another user")
    return app


def check_run_owner(owner_id: str, user: User, run_id: str) -> None:
    if owner_id != user.id:
        raise Forbidden(f"run {run_id!r} belongs to another user")


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise BadRequest(
            "runId must be 1-64 characters of letters, digits, '_', '.' or '-', starting with a letter or digit",
            code="invalid_run_id",
        )
    return run_id
