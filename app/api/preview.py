"""An app's site by preview link (/preview/<appId>/<key>/): what the page's sandboxed iframe shows.

No sign-in cookie: the key is the capability (app/workspace/preview_links.py). Every document is
served with a CSP sandbox, so even opened in its own tab the generated code runs in an opaque
origin and cannot act as the signed-in user.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from litestar import Controller, Request, Response, get
from litestar.params import FromPath
from litestar.response import Redirect

from app.api.deps import ServicesDep
from app.api.workspace import raw_path
from app.codegen.types import CodeGenType
from app.errors import BadRequest, NotFound
from app.services import Services
from app.store.models import App
from app.workspace.publish import NotServable, PathRefused, read_preview_file

# No Cross-Origin-Resource-Policy here: the sandboxed document has an opaque origin, and its own
# style sheets and scripts must load. The sandbox keeps scripts, forms and popups, nothing else.
#
# Access-Control-Allow-Origin: *, because that opaque origin fetches the site's own module
# scripts, `crossorigin` style sheets, fonts and dynamic imports in CORS mode (Vite's index.html
# asks for exactly that), and an opaque origin is cross-origin to everything, itself included.
# It is safe: these responses need no credentials (the key in the URL is the capability), `*`
# never allows a credentialed request, and a page that can name the URL already holds the key.
LINK_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "sandbox allow-scripts allow-forms allow-popups",
    "Access-Control-Allow-Origin": "*",
}


class PreviewController(Controller):
    path = "/preview"

    @get("/{app_id:str}/{key:str}", include_in_schema=False)
    async def root(
        self, request: Request[Any, Any, Any], app_id: FromPath[str], key: FromPath[str], services: ServicesDep
    ) -> Response[bytes] | Redirect:
        if _has_trailing_slash(request):  # Litestar routes ".../key/" here too: the site's index
            return await _serve(services, app_id, key, "")
        return Redirect(f"/preview/{app_id}/{key}/")

    @get("/{app_id:str}/{key:str}/{path:path}", include_in_schema=False)
    async def file(
        self,
        request: Request[Any, Any, Any],
        app_id: FromPath[str],
        key: FromPath[str],
        path: FromPath[str],
        services: ServicesDep,
    ) -> Response[bytes] | Redirect:
        relative = path.removeprefix("/")
        if relative and _has_trailing_slash(request):
            relative += "/"
        return await _serve(services, app_id, key, relative)


async def _serve(services: Services, app_id: str, key: str, relative: str) -> Response[bytes] | Redirect:
    # A wrong key and a missing app look the same: the link reveals nothing it was not given.
    app = await services.apps.get(app_id) if services.preview_links.valid(app_id, key) else None
    if app is None:
        raise NotFound("no such preview link", code="preview_not_found")
    return await _serve_file(services, app, relative, f"/preview/{app_id}/{key}/", LINK_HEADERS)


async def _serve_file(
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


def _has_trailing_slash(request: Request[Any, Any, Any]) -> bool:
    """Whether the path as sent ended with "/" (Litestar strips it from the routed path)."""
    return raw_path(request).endswith(b"/")


def preview_ready(services: Services, app: App) -> bool:
    """Whether the app has a site to show (its index.html). Blocking: call in a thread."""
    return (_preview_root(services, app) / "index.html").is_file()


def _preview_root(services: Services, app: App) -> Path:
    workspace = services.workspace(app.id)
    return workspace / "dist" if app.code_gen_type == CodeGenType.VUE_PROJECT else workspace
