"""An app's site by preview link (/preview/<appId>/<key>/): what the page's sandboxed iframe shows.

No sign-in cookie: the key is the capability (app/workspace/preview_links.py). Every document is
served with a CSP sandbox, so even opened in its own tab the generated code runs in an opaque
origin and cannot act as the signed-in user.
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, Request, Response, get
from litestar.params import FromPath
from litestar.response import Redirect

from app.api.deps import ServicesDep
from app.api.workspace import has_trailing_slash, serve_preview_file
from app.errors import NotFound
from app.services import Services

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
        if has_trailing_slash(request):  # Litestar routes ".../key/" here too: the site's index
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
        if relative and has_trailing_slash(request):
            relative += "/"
        return await _serve(services, app_id, key, relative)


async def _serve(services: Services, app_id: str, key: str, relative: str) -> Response[bytes] | Redirect:
    # A wrong key and a missing app look the same: the link reveals nothing it was not given.
    app = await services.apps.get(app_id) if services.preview_links.valid(app_id, key) else None
    if app is None:
        raise NotFound("no such preview link", code="preview_not_found")
    return await serve_preview_file(services, app, relative, f"/preview/{app_id}/{key}/", LINK_HEADERS)
