"""What an app's workspace gives back: the way to its preview link, a zip download, checkpoints and revert."""

from __future__ import annotations

import asyncio
import re
from typing import Annotated, Any
from urllib.parse import quote

import msgspec
from litestar import Controller, Request, Response, get, post
from litestar.params import FromPath, PathParameter
from litestar.response import Redirect
from litestar.status_codes import HTTP_200_OK

from app.api.deps import CurrentUser, ServicesDep, check_run_id, owned_app
from app.api.openapi import APP_ERRORS, RUN_ID, WORKSPACE_PATH, ClosedJSONBody, documented, error_responses, response
from app.api.views import checkpoint_diff_view, checkpoint_view
from app.checkpoints import CheckpointError
from app.control.cancel import to_thread_to_the_end
from app.errors import BadRequest, NotFound, PayloadTooLarge
from app.services import Services
from app.store.models import User
from app.workspace.publish import NotServable, build_archive

CHECKPOINT_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
# Kept as sent (percent escapes included); anything else a client managed to send is escaped.
_URL_SAFE = "/%:@!$&'()*+,;=-._~?"


class RevertRequest(msgspec.Struct, forbid_unknown_fields=True):
    runId: Annotated[str, documented(pattern=RUN_ID)]  # else invalid_run_id


class WorkspaceController(Controller):
    path = "/apps"

    @get("/{app_id:str}/preview", include_in_schema=False)
    async def preview_root(
        self, request: Request[Any, Any, Any], app_id: FromPath[str], services: ServicesDep, user: CurrentUser
    ) -> Redirect:
        return await _to_preview_link(request, services, user, app_id)

    @get(
        "/{app_id:str}/preview/{path:path}",
        responses={
            302: response("To the same path under the app's preview link, which serves the site", None),
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
    ) -> Redirect:
        return await _to_preview_link(request, services, user, app_id)

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


async def _to_preview_link(request: Request[Any, Any, Any], services: Services, user: User, app_id: str) -> Redirect:
    """The signed-in door to the site: the same path under the app's preview link, for its owner.

    Never the site itself: a document served here would run generated code on the API's origin,
    where it could call the API as the signed-in user. Under the link it is sandboxed (an opaque
    origin without cookies, app/api/preview.py).
    """
    await owned_app(services, user, app_id)
    return Redirect(services.preview_links.url(app_id) + _site_path_as_sent(request))


def _site_path_as_sent(request: Request[Any, Any, Any]) -> str:
    """What follows ``/apps/<id>/preview/`` in the request target, with its query, as the client
    encoded it: the link's route then refuses exactly what this route would have refused."""
    raw = raw_path(request)
    after_id = raw.index(b"/", raw.index(b"/apps/") + len(b"/apps/"))  # at "/preview"
    rest = raw[after_id + len(b"/preview") :].removeprefix(b"/")
    query: bytes = request.scope.get("query_string", b"")
    target = rest + (b"?" + query if query else b"")
    return quote(target, safe=_URL_SAFE)


def raw_path(request: Request[Any, Any, Any]) -> bytes:
    raw: bytes = request.scope.get("raw_path") or request.scope["path"].encode("latin-1")
    return raw
