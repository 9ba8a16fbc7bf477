"""Dependencies shared by the handlers: services, the signed-in user, ownership checks."""

from __future__ import annotations

from typing import Any, TypeAlias

from litestar import Request
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.di import NamedDependency

from app.control.run import RUN_ID_PATTERN
from app.errors import BadRequest, Unauthorized
from app.runs import access
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


async def owned_app(services: Services, user: User, app_id: str) -> App:
    return await access.owned_app(services.apps, user.id, app_id)


def check_run_id(run_id: str) -> str:
    if not RUN_ID_PATTERN.fullmatch(run_id):
        raise BadRequest(
            "runId must be 1-64 characters of letters, digits, '_', '.' or '-', starting with a letter or digit",
            code="invalid_run_id",
        )
    return run_id
