"""Who may touch what: an app's owner, a run's owner."""

from __future__ import annotations

from typing import overload

from app.errors import Forbidden, NotFound
from app.store.models import App
from app.store.repo import Apps


async def owned_app(apps: Apps, user_id: str, app_id: str) -> App:
    app = await apps.get(app_id)
    if app is None:
        raise NotFound(f"no app {app_id!r}", code="app_not_found")
    if app.owner_id != user_id:
        raise Forbidden(f"app {app_id!r} belongs to another user")
    return app


def check_run_owner(owner_id: str, user_id: str, run_id: str) -> None:
    if owner_id != user_id:
        raise Forbidden(f"run {run_id!r} belongs to another user")


@overload
def without_nul(text: str) -> str: ...
@overload
def without_nul(text: None) -> None: ...
def without_nul(text: str | None) -> str | None:
    """User text as it is stored: without NUL characters, which PostgreSQL's text type refuses
    and which mean nothing in a prompt or a name (as surrounding whitespace, they are dropped)."""
    return text.replace("\x00", "") if text is not None else None
