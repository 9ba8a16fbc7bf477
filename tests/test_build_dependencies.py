"""The install fetches registry packages only: what app/builder/dependencies.py lets through and refuses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from app.builder.dependencies import DEFAULT_REGISTRY, DependencyRefused, check_install_inputs

MIRROR = "https://npm.example.internal/registry"


def project(tmp_path: Path, package: dict[str, Any], lock: dict[str, Any] | None = None) -> Path:
    (tmp_path / "package.json").write_text(json.dumps({"name": "site", **package}))
    if lock is not None:
        (tmp_path / "package-lock.json").write_text(json.dumps(lock))
    return tmp_path


@pytest.mark.parametrize(
    "spec",
    ["^3.4.0", "~1.2", "1.0.0 - 2.0.0", ">=1 <3 || 4.x", "latest", "*", "", "npm:vue@^3.4.0", "npm:@vue/shared@3"],
)
def test_registry_versions_pass(tmp_path: Path, spec: str) -> None:
    check_install_inputs(project(tmp_path, {"dependencies": {"vue": spec}}), DEFAULT_REGISTRY)


@pytest.mark.parametrize(
    "spec",
    [
        "http://127.0.0.1:6379/",
        "https://evil.example/x.tgz",
        "git+ssh://git@github.com/a/b.git",
        "github:owner/repo",
        "owner/repo",
        "file:../..",
        "link:../other-app",
        "../../runforge.db",
        "npm:x@http://127.0.0.1:5432/",
        "npm:",
    ],
)
@pytest.mark.parametrize("field", ["dependencies", "devDependencies", "optionalDependencies", "peerDependencies"])
def test_urls_paths_and_repositories_are_refused(tmp_path: Path, spec: str, field: str) -> None:
    with pytest.raises(DependencyRefused, match="only registry versions"):
        check_install_inputs(project(tmp_path, {field: {"x": spec}}), DEFAULT_REGISTRY)


def test_overrides_are_checked_however_deep(tmp_path: Path) -> None:
    package = {"overrides": {"vite": {"esbuild": {".": "http://127.0.0.1:8000/x.tgz"}}}}
    with pytest.raises(DependencyRefused):
        check_install_inputs(project(tmp_path, package), DEFAULT_REGISTRY)


def test_a_non_string_spec_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DependencyRefused):
        check_install_inputs(project(tmp_path, {"dependencies": {"x": {"url": "http://127.0.0.1/"}}}), DEFAULT_REGISTRY)


def test_lockfile_sources_must_be_the_registry(tmp_path: Path) -> None:
    good = {
        "packages": {
            "": {"dependencies": {"vue": "^3"}},
            "node_modules/vue": {"resolved": f"{DEFAULT_REGISTRY}vue/-/vue-3.4.0.tgz"},
        }
    }
    check_install_inputs(project(tmp_path, {}, good), DEFAULT_REGISTRY)
    mirrored = {"packages": {"node_modules/vue": {"resolved": f"{MIRROR}/vue/-/vue-3.4.0.tgz"}}}
    check_install_inputs(project(tmp_path, {}, mirrored), MIRROR)  # the operator's registry


@pytest.mark.parametrize(
    "lock",
    [
        {"packages": {"node_modules/x": {"resolved": "http://127.0.0.1:6379/x.tgz"}}},
        {"packages": {"node_modules/x": {"resolved": "git+ssh://git@github.com/a/b.git#abc"}}},
        {"packages": {"node_modules/x": {"resolved": "file:../../runforge.db"}}},
        {"packages": {"node_modules/x": {"resolved": f"{DEFAULT_REGISTRY[:-1]}.evil.example/x.tgz"}}},
        {"packages": {"node_modules/x": {"link": True, "resolved": "../victim"}}},
        {"dependencies": {"a": {"version": "1.0.0", "dependencies": {"b": {"resolved": "http://10.0.0.1/b.tgz"}}}}},
    ],
    ids=["url", "git", "file", "look-alike host", "link", "v1 nested"],
)
def test_lockfile_urls_elsewhere_are_refused(tmp_path: Path, lock: dict[str, Any]) -> None:
    with pytest.raises(DependencyRefused, match=r"package-lock\.json"):
        check_install_inputs(project(tmp_path, {}, lock), DEFAULT_REGISTRY)


def test_a_project_npmrc_is_refused(tmp_path: Path) -> None:
    (tmp_path / ".npmrc").write_text("registry=http://127.0.0.1:6379/\n")
    with pytest.raises(DependencyRefused, match=r"\.npmrc"):
        check_install_inputs(project(tmp_path, {}), DEFAULT_REGISTRY)


def test_the_shipped_presets_pass(tmp_path: Path) -> None:
    templates = Path(__file__).resolve().parents[1] / "templates"
    checked = [path.parent for path in templates.glob("*/project/package.json")]
    assert checked  # the Vue presets
    for project_dir in checked:
        check_install_inputs(project_dir, DEFAULT_REGISTRY)
