"""The presets as shipped build: a real ``npm install`` and ``npm run build`` of every Vue preset.

Each vue_project preset of the real catalog is copied with :func:`copy_preset` into a temp
workspace, built with :func:`run_build` exactly as a run builds it, and published with
:func:`publish_build`. The published ``dist/`` must be servable under ``/apps/<id>/preview/``:
every URL in ``index.html`` relative (``./assets/...``, never ``/assets/...``) and naming a file
that exists. The multi_file preset (landing) needs no build: its page must link its stylesheet
and script, which must exist.

Needs npm and the npm registry (the lockfiles pin every package). The npm cache is npm's default
(``~/.npm``), shared between the presets and between runs, so a warm CI machine downloads nothing.
A machine without npm fails these tests with a clear message; ``RUNFORGE_SKIP_NPM_BUILDS=1`` skips
them instead.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

import pytest

from app.builder import BUILD_DIR_PREFIX, BuildFailed, publish_build, run_build
from app.control.cancel import StopGate
from app.control.events import BuildEvent
from app.presets import Preset, copy_preset, load_catalog
from app.settings import DEFAULT_TEMPLATES_DIR, BuildSettings

SKIP_ENV = "RUNFORGE_SKIP_NPM_BUILDS"
SETTINGS = BuildSettings(install_timeout_s=300, build_timeout_s=120)
CATALOG = load_catalog(DEFAULT_TEMPLATES_DIR)
VUE_PRESETS = CATALOG.for_type("vue_project")
MULTI_FILE_PRESETS = CATALOG.for_type("multi_file")
# URLs that name no file of the site: in-page anchors and inline data.
_NOT_FILES = ("#", "data:", "mailto:", "tel:", "javascript:", "about:")
_CSS_URL = re.compile(r"""url\(\s*(['"]?)([^'")]+)\1\s*\)""")


# -- helpers -------------------------------------------------------------------------------


class _References(HTMLParser):
    """Every ``src`` and ``href`` attribute value of a page, in document order."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.urls += [value for name, value in attrs if name in ("src", "href") and value is not None]


def page_urls(page: Path) -> list[str]:
    parser = _References()
    parser.feed(page.read_text(encoding="utf-8"))
    parser.close()
    return parser.urls


def local_urls(urls: list[str]) -> list[str]:
    return [url for url in urls if not url.strip().lower().startswith(_NOT_FILES)]


def is_external(url: str) -> bool:
    return url.startswith("//") or bool(urlsplit(url).scheme)


def resolves(site: Path, base_dir: Path, url: str) -> bool:
    """A relative URL, seen from a document in ``base_dir``, names a file inside ``site``.

    Root-absolute URLs never do: the preview serves the site under ``/apps/<id>/preview/``.
    """
    path = unquote(urlsplit(url).path)
    if path.startswith("/"):
        return False
    target = (base_dir / PurePosixPath(path)).resolve()
    return target.is_relative_to(site.resolve()) and target.is_file()


def missing_targets(site: Path, base_dir: Path, urls: list[str]) -> list[str]:
    return [url for url in urls if not resolves(site, base_dir, url)]


def require_npm() -> None:
    """Skip when asked to; otherwise a missing npm is a failure, not a silent skip."""
    if os.environ.get(SKIP_ENV) == "1":
        pytest.skip(f"{SKIP_ENV}=1: the real npm builds of the presets are skipped")
    if shutil.which(SETTINGS.npm) is None:
        pytest.fail(
            f"{SETTINGS.npm!r} is not on PATH: these tests run a real `npm install` and `npm run build` of every "
            f"Vue preset, and npm (with Node.js) is part of the machine Runforge runs on. Install Node.js and npm, "
            f"or set {SKIP_ENV}=1 to skip these tests.",
            pytrace=False,
        )


def steps(events: list[BuildEvent]) -> list[tuple[str, str, int | None]]:
    return [(e.step, e.status, e.exit_code) for e in events if e.status != "output"]


def log_of(events: list[BuildEvent]) -> str:
    return "\n".join(f"{e.step} {e.status}: {e.line}" for e in events)


# -- the catalog ---------------------------------------------------------------------------


def test_catalog_has_the_presets_built_here() -> None:
    assert CATALOG.errors == ()
    assert {p.name for p in VUE_PRESETS} >= {"company", "portfolio"}
    assert "landing" in {p.name for p in MULTI_FILE_PRESETS}


# -- Vue presets: real npm -----------------------------------------------------------------


@pytest.mark.timeout(600)
@pytest.mark.parametrize("preset", VUE_PRESETS, ids=lambda p: p.name)
async def test_vue_preset_installs_builds_and_publishes(preset: Preset, tmp_path: Path) -> None:
    require_npm()
    workspace = tmp_path / "workspace"
    assert copy_preset(preset, workspace, StopGate())
    events: list[BuildEvent] = []
    try:
        result = await run_build(workspace, SETTINGS, events.append, StopGate())
    except BuildFailed as exc:
        pytest.fail(f"{preset.name}: {exc.code}: {exc.message}\n--- events ---\n{log_of(events)}", pytrace=False)

    assert result.skipped_reason is None
    assert result.installed
    assert result.out_dir is not None
    progress = steps(events)
    assert ("install", "finished", 0) in progress, log_of(events)
    assert ("build", "finished", 0) in progress, log_of(events)
    assert not [s for s in progress if s[1] == "failed"], log_of(events)

    await asyncio.to_thread(publish_build, workspace, result.out_dir)
    dist = workspace / "dist"
    index = dist / "index.html"
    assert index.is_file()
    assert not list(workspace.glob(f"{BUILD_DIR_PREFIX}*"))  # the temp out dir became dist/

    html = index.read_text(encoding="utf-8")
    # Root-absolute asset URLs break the preview, which serves the site under /apps/<id>/preview/.
    assert 'src="/assets' not in html
    assert 'href="/assets' not in html
    urls = local_urls(page_urls(index))
    assert not [url for url in urls if is_external(url)], urls  # no CDN: the preview works offline
    assert [url for url in urls if url.startswith("./assets/") and url.endswith(".js")], urls
    assert not [url for url in urls if not url.startswith("./")], urls
    assert missing_targets(dist, dist, urls) == []

    # The stylesheets' own url(...) references (fonts, images) must resolve as well.
    for css in (dist / "assets").glob("*.css"):
        refs = [m[2] for m in _CSS_URL.finditer(css.read_text(encoding="utf-8"))]
        refs = [ref for ref in local_urls(refs) if not is_external(ref)]
        assert not [ref for ref in refs if ref.startswith("/")], (css.name, refs)
        assert missing_targets(dist, css.parent, refs) == [], css.name


# -- the multi_file preset: no build, three linked files -------------------------------------


@pytest.mark.parametrize("preset", MULTI_FILE_PRESETS, ids=lambda p: p.name)
def test_multi_file_preset_links_its_stylesheet_and_script(preset: Preset, tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    assert copy_preset(preset, workspace, StopGate())
    index = workspace / "index.html"
    assert index.is_file()
    urls = page_urls(index)
    # The names the html/multi_file code path writes the answer's css and js blocks to.
    assert "style.css" in urls
    assert "script.js" in urls
    assert (workspace / "style.css").is_file()
    assert (workspace / "script.js").is_file()
    local = local_urls(urls)
    assert not [url for url in local if is_external(url)], local  # no CDN links, fonts or remote images
    assert missing_targets(workspace, workspace, local) == []
