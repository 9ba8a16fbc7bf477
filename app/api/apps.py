"""Apps, their chat history and their workspace files."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Sequence
from typing import Annotated, Any

import msgspec
from litestar import Controller, delete, get, post
from litestar.params import FromPath, PathParameter
from litestar.status_codes import HTTP_204_NO_CONTENT

from app.api.deps import CurrentUser, ServicesDep, owned_app
from app.api.openapi import (
    APP_ERRORS,
    MAX_MESSAGE_CHARS,
    NOT_BLANK,
    WORKSPACE_PATH,
    ClosedJSONBody,
    documented,
    error_responses,
    response,
)
from app.api.preview import preview_ready
from app.api.views import AppView, CreatedAppView, app_view, message_view
from app.codegen.types import CodeGenType, infer_code_gen_type
from app.errors import BadRequest, NotFound, PayloadTooLarge
from app.presets import match_prompt
from app.runs.access import without_nul
from app.services import Services
from app.store.models import App
from app.workspace.fs import WorkspaceError, read_text, tree
from app.workspace.paths import PathRefused, resolve_in_workspace

MAX_NAME_CHARS = 200


class CreateApp(msgspec.Struct, forbid_unknown_fields=True):
    # Empty or missing: named from the prompt; blank (only spaces) is refused (invalid_name).
    name: Annotated[str | None, documented(pattern=f"^$|{NOT_BLANK}", maxLength=MAX_NAME_CHARS)] = None
    initPrompt: Annotated[str | None, documented(maxLength=MAX_MESSAGE_CHARS)] = None
    # None: chosen from the prompt (see choose_code_gen_type).
    codeGenType: CodeGenType | None = None


class AppsController(Controller):
    path = "/apps"

    @post("/", responses={201: response("The app", CreatedAppView), **error_responses(400, 401, 413)})
    async def create(self, data: ClosedJSONBody[CreateApp], services: ServicesDep, user: CurrentUser) -> dict[str, Any]:
        name, prompt = without_nul(data.name), without_nul(data.initPrompt)
        name = (name or (prompt or "").strip()[:60] or "Untitled app").strip()
        if not name or len(name) > MAX_NAME_CHARS:
            raise BadRequest(f"name must be 1-{MAX_NAME_CHARS} characters", code="invalid_name")
        if prompt is not None and len(prompt) > services.settings.max_message_chars:
            raise PayloadTooLarge(
                f"initPrompt is longer than {services.settings.max_message_chars} characters", code="message_too_large"
            )
        chosen, rule = choose_code_gen_type(services, data.codeGenType, prompt or name)
        app = await services.apps.create(user.id, name, chosen, prompt)
        return {**(await _views(services, [app]))[0], "codeGenTypeRule": rule}

    @get("/", responses={200: response("The user's apps", list[AppView]), **error_responses(401)})
    async def list_apps(self, services: ServicesDep, user: CurrentUser) -> list[dict[str, Any]]:
        return await _views(services, await services.apps.list_for(user.id))

    @get("/{app_id:str}", responses={200: response("The app", AppView), **APP_ERRORS})
    async def get_app(self, app_id: FromPath[str], services: ServicesDep, user: CurrentUser) -> dict[str, Any]:
        return (await _views(services, [await owned_app(services, user, app_id)]))[0]

    @delete("/{app_id:str}", status_code=HTTP_204_NO_CONTENT, responses=APP_ERRORS)
    async def delete_app(self, app_id: FromPath[str], services: ServicesDep, user: CurrentUser) -> None:
        await owned_app(services, user, app_id)

        async def delete_everything() -> list[str]:
            run_ids = await services.apps.delete(app_id)
            await asyncio.to_thread(shutil.rmtree, services.workspace(app_id), ignore_errors=True)
            await asyncio.to_thread(services.checkpoints.delete, app_id)
            return run_ids

        await services.manager.delete_app(app_id, delete_everything)

    @get("/{app_id:str}/messages", responses=APP_ERRORS)
    async def messages(self, app_id: FromPath[str], services: ServicesDep, user: CurrentUser) -> list[dict[str, Any]]:
        await owned_app(services, user, app_id)
        return [message_view(m) for m in await services.apps.messages(app_id)]

    @get("/{app_id:str}/files", responses=APP_ERRORS)
    async def files(self, app_id: FromPath[str], services: ServicesDep, user: CurrentUser) -> list[dict[str, Any]]:
        await owned_app(services, user, app_id)
        root = services.workspace(app_id)
        if not await asyncio.to_thread(root.is_dir):
            return []
        entries = await asyncio.to_thread(tree, root)
        return [{"path": e.path, "kind": e.kind, "size": e.size} for e in entries]

    @get("/{app_id:str}/files/{path:path}", responses=APP_ERRORS)
    async def file(
        self,
        app_id: FromPath[str],
        path: Annotated[str, PathParameter(schema_extra=WORKSPACE_PATH)],
        services: ServicesDep,
        user: CurrentUser,
    ) -> dict[str, Any]:
        await owned_app(services, user, app_id)
        root = services.workspace(app_id)
        relative = path.removeprefix("/")  # Litestar keeps the leading slash of a path param
        try:
            resolve_in_workspace(root, relative)
            content = await asyncio.to_thread(read_text, root, relative)
        except PathRefused as exc:
            raise BadRequest(str(exc), code="invalid_path") from None
        except (WorkspaceError, OSError):
            raise NotFound(f"no file {relative!r} in app {app_id}", code="file_not_found") from None
        return {"path": relative, "content": content}


def choose_code_gen_type(services: Services, given: CodeGenType | None, prompt: str) -> tuple[str, str]:
    """The app's generation type and the rule that chose it (docs/api.md lists the rules).

    Given explicitly, it is kept. Otherwise a prompt that hits a preset takes the preset's
    type (so the preset can seed the first run), and else the keyword rules decide.
    """
    if given is not None:
        return given.value, "given"
    match = match_prompt(prompt, services.presets.presets)
    if match.preset is not None:
        return match.preset.code_gen_type, f"template:{match.preset.name}"
    choice = infer_code_gen_type(prompt)
    return choice.code_gen_type.value, choice.rule


async def _views(services: Services, apps: Sequence[App]) -> list[dict[str, Any]]:
    """Apps as the API shows them, each with its preview link and whether it has a site yet."""
    ready = await asyncio.to_thread(lambda: [preview_ready(services, app) for app in apps])
    return [app_view(app, services.preview_links.url(app.id), ok) for app, ok in zip(apps, ready, strict=True)]
