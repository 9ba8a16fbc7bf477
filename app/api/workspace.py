"""What an app's workspace gives back: the live preview, a zip download, checkpoints and revert."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Annotated, Any

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, PathParameter
from litestar.response import Redirect
from litestar.status_codes import HTTP_200_OK

from app.api.deps import CurrentUser, ServicesDep, check_run_id, owned_app
from app.api.openapi import APP_ERRORS, RUN_ID, WORKSPACE_PATH, ClosedJSONBody, documented, error_responses, response
from app.api.views import checkpoint_diff_view, checkpoint_view
from app.checkpoints import CheckpointError
from app.codegen.types import CodeGenType
from app.control.cancel import to_thread_to_the_end
from app.errors import BadRequest, NotFound, PayloadTooLarge
from app.services import Services
from app.store.models import App, User
from app.workspace.publish import NotServable, PathRefused, build_archive, read_preview_file

CHECKPOINT_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Preview responses carry generated code: never cached (it changes with every run), never sniffed.
PREVIEW_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Referrer-Policy": "no-referrer",
}


class RevertRequest(msgspec.Struct, forbid_unknown_fields=True):
    runId: Annotated[str, documented(pattern=RUN_ID)]  # else invalid_run_id


class WorkspaceController(Controller):
    path = "/apps"

    @get("/{app_id:str}/preview", include_in_schema=False)
    async def preview_root(
        self, request: Request[Any, Any, Any], app_id: FromPath[str], services: ServicesDep, user: CurrentUser
    ) -> Response[bytes] | Redirect:
        # Litestar routes ".../preview/" here too (it strips a trailing slash before routing):
        # that is the site's index, and redirecting it to itself would loop.
        if _has_trailing_slash(request):
            return await _serve_preview(services, user, app_id, "")
        await owned_app(services, user, app_id)
        return Redirect(f"/apps/{app_id}/preview/")

    @get(
        "/{app_id:str}/preview/{path:path}",
        responses={
            # Any type: the site's own files (HTML, CSS, scripts, images), by their names.
            200: response("A file of the app's site", bytes, "*/*"),
            302: response("A directory without its final slash: to its index", None),
            **APP_ERRORS,
        },
    )
    async def preview(
        self,
        request: Request[Any, Any, Any],
        app_id: FromPath[str],
        path: Annotated[str, PathParameter(schema_extra=WORKSPACE_PATH)],
        services: ServicesDep,
        user: CurrentUser,
    ) -> Response[bytes] | Redirect:
        relative = path.removeprefix("/")  # Litestar keeps the leading slash of a path param
        if relative and _has_trailing_slash(request):
            relative += "/"  # stripped by Litestar: "dir/" means the directory's index.html
        return await _serve_preview(services, user, app_id, relative)

    @get(
        "/{app_id:str}/download",
        responses={
            200: response("The workspace as a zip archive", bytes, "application/zip"),
            **APP_ERRORS,
            **error_responses(413),
        },
    )
    async def download(self, app_id: FromPath[str], services: ServicesDep, user: CurrentUser) -> Response[bytes]:
        await owned_app(services, user, app_id)
        try:
            archive = await asyncio.to_thread(build_archive, services.workspace(app_id))
        except NotServable as exc:
            raise PayloadTooLarge(str(exc), code="workspace_too_large") from None
        headers = {"Content-Disposition": f'attachment; filename="app-{app_id}.zip"', "Cache-Control": "no-store"}
        return Response(archive, media_type="application/zip", headers=headers)

    @get("/{app_id:str}/checkpoints", responses=APP_ERRORS)
    async def checkpoints(
        self, app_id: FromPath[str], services: ServicesDep, user: CurrentUser
    ) -> list[dict[str, Any]]:
        await owned_app(services, user, app_id)
        found = await asyncio.to_thread(services.checkpoints.list, app_id)
        return [checkpoint_view(c) for c in found]

    @get("/{app_id:str}/checkpoints/{sha:str}/diff", responses={**APP_ERRORS, **error_responses(400)})
    async def checkpoint_diff(
        self,
        app_id: FromPath[str],
        sha: Annotated[str, PathParameter(schema_extra={"pattern": f"^(?:{CHECKPOINT_SHA.pattern})$"})],
        services: ServicesDep,
        user: CurrentUser,
    ) -> dict[str, Any]:
        """What a checkpoint changed against the one before it: files, line counts, unified diffs."""
        await owned_app(services, user, app_id)
        if CHECKPOINT_SHA.fullmatch(sha) is None:
            raise BadRequest("a checkpoint is named by its sha (40 or 64 hex digits)", code="invalid_checkpoint")
        try:
            diff = await asyncio.to_thread(services.checkpoints.diff, app_id, sha)
        except CheckpointError:
            raise NotFound(f"no checkpoint {sha} in app {app_id}", code="checkpoint_not_found") from None
        return checkpoint_diff_view(diff)

    @post("/{app_id:str}/revert", status_code=HTTP_200_OK, responses={**APP_ERRORS, **error_responses(409)})
    async def revert(
        self, app_id: FromPath[str], data: ClosedJSONBody[RevertRequest], services: ServicesDep, user: CurrentUser
    ) -> dict[str, Any]:
        await owned_app(services, user, app_id)
        return await revert_to_run(services, app_id, check_run_id(data.runId))


async def revert_to_run(services: Services, app_id: str, run_id: str) -> dict[str, Any]:
    """Restore the workspace as it was after ``run_id``, as a new checkpoint (so undoable)."""
    checkpoints = services.checkpoints
    async with services.manager.idle_app(app_id):
        if await asyncio.to_thread(checkpoints.find_run, app_id, run_id) is None:
            raise NotFound(f"run {run_id!r} has no checkpoint in app {app_id}", code="checkpoint_not_found")
        try:
            workspace = services.workspace(app_id)
            created = await to_thread_to_the_end(checkpoints.revert_to_run, app_id, workspace, run_id)
        except CheckpointError as exc:
            raise NotFound(str(exc), code="checkpoint_not_found") from None
    return checkpoint_view(created)


def preview_ready(services: Services, app: App) -> bool:
    """Whether the app has a site to show (its index.html). Blocking: call in a thread."""
    return (_preview_root(services, app) / "index.html").is_file()


def _preview_root(services: Services, app: App) -> Path:
    workspace = services.workspace(app.id)
    return workspace / "dist" if app.code_gen_type == CodeGenType.VUE_PROJECT else workspace


async def _serve_preview(services: Services, user: User, app_id: str, relative: str) -> Response[bytes] | Redirect:
    app = await owned_app(services, user, app_id)
    return await serve_preview_file(services, app, relative, f"/apps/{app_id}/preview/", PREVIEW_HEADERS)


async def serve_preview_file(
    services: Services, app: App, relative: str, base: str, extra_headers: dict[str, str]
) -> Response[bytes] | Redirect:
    """One file of the app's site (its workspace, or dist/ for Vue); ``base`` is the site's URL."""
    try:
        found = await asyncio.to_thread(read_preview_file, _preview_root(services, app), relative)
    except PathRefused as exc:
        raise BadRequest(str(exc), code="invalid_path") from None
    except (NotServable, OSError):
        raise NotFound(f"nothing to preview at {relative or '/'!r}", code="preview_not_found") from None
    if found.redirect_to_dir:
        return Redirect(f"{base}{relative}/")
    # A Content-Type header: from media_type alone, Litestar appends a second "; charset=utf-8".
    headers = {**extra_headers, "Content-Type": found.media_type}
    return Response(found.content, media_type=found.media_type, headers=headers)


def has_trailing_slash(request: Request[Any, Any, Any]) -> bool:
    return _has_trailing_slash(request)


def _has_trailing_slash(request: Request[Any, Any, Any]) -> bool:
    """Whether the path as sent ended with "/" (Litestar strips it from the routed path)."""
    raw = request.scope.get("raw_path") or request.scope["path"].encode("latin-1")
    return raw.endswith(b"/")
