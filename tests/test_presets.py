"""Presets: manifest loading, prompt matching, the atomic gated copy, the checks and the CLI.

Every test builds its own small presets in tmp_path (mirroring the shipped portfolio, company
and landing presets), except the last one, which checks the real ``templates/`` directory.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest

from app import cli
from app.control.cancel import RunCancelled, StopGate, StopReason
from app.presets import copier
from app.presets.check import check_catalog, check_preset
from app.presets.copier import copy_preset, workspace_is_empty
from app.presets.manifest import Catalog, Preset, PresetError, load_catalog, load_preset
from app.presets.matcher import FUZZY_THRESHOLD, KEYWORD_THRESHOLD, Matcher, match_prompt, normalise
from app.settings import DEFAULT_TEMPLATES_DIR

# --- building presets --------------------------------------------------------------------------

VUE_FILES = {
    "package.json": json.dumps(
        {
            "name": "starter",
            "private": True,
            "type": "module",
            "scripts": {"dev": "vite", "build": "vite build"},
            "dependencies": {"vue": "^3.5.0"},
            "devDependencies": {"vite": "^7.0.0", "@vitejs/plugin-vue": "^6.0.0"},
        }
    ),
    "vite.config.js": "import { defineConfig } from 'vite'\nimport vue from '@vitejs/plugin-vue'\n"
    "export default defineConfig({ plugins: [vue()] })\n",
    "index.html": '<!doctype html>\n<html><head><link rel="icon" href="/favicon.svg">'
    '<link rel="preconnect" href="https://fonts.example.com"></head>\n'
    '<body><a href="#app">skip</a><div id="app"></div>\n'
    '<script type="module" src="/src/main.js"></script></body></html>\n',
    "public/favicon.svg": "<svg xmlns='http://www.w3.org/2000/svg'/>\n",
    "src/main.js": "import { createApp } from 'vue'\nimport App from './App.vue'\ncreateApp(App).mount('#app')\n",
    "src/App.vue": "<template><h1>Hello</h1></template>\n",
}
STATIC_FILES = {
    "index.html": '<!doctype html>\n<html><head><link rel="stylesheet" href="style.css"></head>\n'
    '<body><img src="data:image/png;base64,AAAA"><script src="./script.js"></script></body></html>\n',
    "style.css": "body { margin: 0 }\n",
    "script.js": "console.log('hi')\n",
}

PORTFOLIO = {
    "name": "portfolio",
    "title": "Personal portfolio",
    "description": "A personal portfolio website to showcase projects, work and skills, with an about section "
    "and a contact form. 个人作品集网站：展示摄影、设计、开发作品与简历。",
    "codeGenType": "vue_project",
    "triggers": ["Build me a personal portfolio website", "帮我做一个个人作品集网站"],
    "keywords": ["portfolio", "personal website", "resume", "showcase", "photographer", "designer", "作品集", "摄影"],
    "instruction": "Start from the portfolio preset: keep its layout, replace the sample projects.",
}
COMPANY = {
    "name": "company",
    "title": "Company website",
    "description": "A corporate website for a small business: home, services, about us, team and contact. "
    "企业官网：公司介绍、服务、团队与联系方式。",
    "codeGenType": "vue_project",
    "triggers": ["Build a company website for my business", "帮我做一个公司官网"],
    "keywords": ["company", "corporate", "business", "services", "about us", "firm", "公司", "企业", "官网"],
    "instruction": "Start from the company preset: fill in the services and the team.",
}
LANDING = {
    "name": "landing",
    "title": "Product landing page",
    "description": "A single landing page for a product or app launch: hero, features, pricing and a waitlist "
    "signup form. 产品落地页：介绍产品亮点并收集报名。",
    "codeGenType": "multi_file",
    "triggers": ["Create a landing page for my product", "帮我做一个产品落地页"],
    "keywords": ["landing page", "launch", "waitlist", "signup", "sign up", "pricing", "落地页", "着陆页"],
    "instruction": "Start from the landing preset: keep index.html, style.css and script.js.",
}


def write_manifest(directory: Path, manifest: Mapping[str, object]) -> None:
    # JSON strings and arrays are valid TOML values, escapes included.
    lines = [f"{key} = {json.dumps(value, ensure_ascii=False)}" for key, value in manifest.items()]
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "template.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_files(directory: Path, files: dict[str, str]) -> None:
    for rel, content in files.items():
        (directory / rel).parent.mkdir(parents=True, exist_ok=True)
        (directory / rel).write_text(content, encoding="utf-8")


def add_preset(root: Path, manifest: Mapping[str, object], files: dict[str, str] | None = None) -> Path:
    directory = root / str(manifest["name"])
    write_manifest(directory, manifest)
    if files is None:
        files = VUE_FILES if manifest["codeGenType"] == "vue_project" else STATIC_FILES
    (directory / "project").mkdir(exist_ok=True)
    write_files(directory / "project", files)
    return directory


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A templates dir with the three realistic presets."""
    templates = tmp_path / "templates"
    for manifest in (PORTFOLIO, COMPANY, LANDING):
        add_preset(templates, manifest)
    return templates


@pytest.fixture
def presets(root: Path) -> tuple[Preset, ...]:
    return load_catalog(root).presets


def tree_of(directory: Path) -> dict[str, str]:
    """Relative path -> content of every file (symlinks and dirs left out)."""
    return {
        path.relative_to(directory).as_posix(): path.read_text(encoding="utf-8")
        for path in sorted(directory.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def temp_dirs(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


# --- manifest --------------------------------------------------------------------------------


def test_load_preset_reads_every_field(root: Path) -> None:
    preset = load_preset(root / "company")
    assert preset.name == "company"
    assert preset.title == "Company website"
    assert preset.code_gen_type == "vue_project"
    assert preset.triggers == tuple(COMPANY["triggers"])
    assert preset.keywords[:2] == ("company", "corporate")
    assert preset.instruction.startswith("Start from the company preset")
    assert preset.directory == root / "company"
    assert preset.project_dir == root / "company" / "project"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tigger": ["x"]}, "unknown keys: tigger"),
        ({"name": None}, "missing keys: name"),
        ({"title": 3}, "title must be a string"),
        ({"triggers": "Build me a site"}, "triggers must be a list of non-empty strings"),
        ({"triggers": ["ok", ""]}, "triggers must be a list of non-empty strings"),
        ({"triggers": []}, "triggers must not be empty"),
        ({"keywords": [1, 2]}, "keywords must be a list of non-empty strings"),
        ({"codeGenType": "react"}, "codeGenType 'react' must be one of html, multi_file, vue_project"),
        ({"name": "Portfolio"}, "must match [a-z0-9_-]+"),
        ({"name": "other"}, "differs from its directory name 'portfolio'"),
    ],
)
def test_bad_manifests_are_refused_with_a_clear_message(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    manifest = {key: value for key, value in {**PORTFOLIO, **change}.items() if value is not None}
    directory = tmp_path / "portfolio"
    write_manifest(directory, manifest)
    (directory / "project").mkdir()
    with pytest.raises(PresetError) as caught:
        load_preset(directory)
    assert str(caught.value).startswith("portfolio/template.toml: ")
    assert message in str(caught.value)


def test_invalid_toml_missing_manifest_and_missing_project_are_errors(tmp_path: Path) -> None:
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "template.toml").write_text("name = \n")
    with pytest.raises(PresetError, match="not valid TOML"):
        load_preset(tmp_path / "broken")
    (tmp_path / "empty").mkdir()
    with pytest.raises(PresetError, match=r"no template\.toml"):
        load_preset(tmp_path / "empty")
    write_manifest(tmp_path / "portfolio", PORTFOLIO)
    with pytest.raises(PresetError, match="project/ is missing"):
        load_preset(tmp_path / "portfolio")


def test_catalog_is_sorted_and_looks_presets_up(root: Path) -> None:
    catalog = load_catalog(root)
    assert [preset.name for preset in catalog.presets] == ["company", "landing", "portfolio"]
    assert catalog.errors == ()
    assert catalog.get("landing") is not None
    assert catalog.get("nope") is None
    assert [preset.name for preset in catalog.for_type("vue_project")] == ["company", "portfolio"]
    assert [preset.name for preset in catalog.for_type("multi_file")] == ["landing"]
    assert catalog.for_type("html") == ()


def test_catalog_keeps_good_presets_and_lists_bad_ones(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_manifest(root / "zzz", {**LANDING, "name": "zzz", "colour": "red"})
    (root / ".hidden").mkdir()
    (root / ".gitkeep").write_text("")
    with caplog.at_level(logging.WARNING, logger="app.presets"):
        catalog = load_catalog(root)
    assert [preset.name for preset in catalog.presets] == ["company", "landing", "portfolio"]
    assert catalog.errors == ("zzz/template.toml: unknown keys: colour",)
    assert "unknown keys: colour" in caplog.text


def test_missing_catalog_root_is_an_error_not_an_exception(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="app.presets"):
        catalog = load_catalog(tmp_path / "nowhere")
    assert catalog == Catalog(presets=(), errors=catalog.errors)
    assert len(catalog.errors) == 1
    assert "cannot read templates directory" in catalog.errors[0]
    assert "cannot read templates directory" in caplog.text


# --- matcher ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ＢＵＩＬＤ me a personal portfolio website！", "build me a personal portfolio website"),
        ("  Build\tME  a\npersonal-portfolio website?? ", "build me a personal portfolio website"),
        ("帮我做一个公司官网。", "帮我做一个公司官网"),
        ("Straße ＃１ 😀 $5", "strasse 1 5"),
        ("!!! ？？？ ...", ""),
    ],
)
def test_normalise(text: str, expected: str) -> None:
    assert normalise(text) == expected


@pytest.mark.parametrize(
    ("prompt", "name"),
    [
        ("Build me a personal portfolio website", "portfolio"),
        ("build me a personal portfolio website", "portfolio"),
        ("ＢＵＩＬＤ me a personal portfolio website！", "portfolio"),
        ("  Build   me a personal-portfolio website?? ", "portfolio"),
        ("BUILD A COMPANY WEBSITE FOR MY BUSINESS.", "company"),
        ("create a landing page, for my product", "landing"),
        ("帮我做一个个人作品集网站", "portfolio"),
        ("帮我做一个公司官网！", "company"),
        ("帮我做一个产品落地页。", "landing"),
    ],
)
def test_exact_hits(presets: tuple[Preset, ...], prompt: str, name: str) -> None:
    match = match_prompt(prompt, presets)
    assert (match.name, match.method, match.score) == (name, "exact", 1.0)


@pytest.mark.parametrize(
    ("prompt", "name"),
    [
        ("Build me a personal portfolo website", "portfolio"),  # typo
        ("build me a personal portfolio site", "portfolio"),  # small edit
        ("Build a company website for our business", "company"),
        ("Create a landing page for my new product", "landing"),
        ("帮我做一个公司官网站", "company"),
    ],
)
def test_fuzzy_hits(presets: tuple[Preset, ...], prompt: str, name: str) -> None:
    match = match_prompt(prompt, presets)
    assert (match.name, match.method) == (name, "fuzzy")
    assert FUZZY_THRESHOLD <= match.score < 1.0


@pytest.mark.parametrize(
    ("prompt", "name"),
    [
        ("做一个摄影师的作品集", "portfolio"),
        ("a portfolio to showcase my work as a designer", "portfolio"),
        ("a corporate site for my accounting firm with services and about us", "company"),
        ("给我们的企业做一个官网", "company"),
        ("landing page for our app launch with a waitlist signup", "landing"),
        ("做一个新产品的落地页，带报名表单", "landing"),
    ],
)
def test_keyword_hits(presets: tuple[Preset, ...], prompt: str, name: str) -> None:
    match = match_prompt(prompt, presets)
    assert (match.name, match.method) == (name, "keywords")
    assert KEYWORD_THRESHOLD <= match.score <= 1.0


@pytest.mark.parametrize(
    "prompt",
    [
        "write a python script that sorts numbers",
        "解释一下快速排序",
        "a todo list app",
        "hello",
        # One keyword ("portfolio") but nothing else on topic: a finance tool, not a website.
        "manage my stock portfolio spreadsheet in python",
        # "app" is a whole word here but not a keyword; "happy" must not count as "app" anyway.
        "a happy little weather app",
        # Two presets, one keyword each and the same overlap: a tie, so no guess.
        "a corporate portfolio",
        "",
        "   ",
        "!!! ？？？ ...",
    ],
)
def test_near_misses_and_empty_prompts_do_not_match(presets: tuple[Preset, ...], prompt: str) -> None:
    match = match_prompt(prompt, presets)
    assert (match.preset, match.name, match.method) == (None, None, "none")
    assert match.score < KEYWORD_THRESHOLD or prompt == "a corporate portfolio"


def test_equal_presets_tie_in_every_step(tmp_path: Path) -> None:
    # Two presets that are identical but for the name: no step may pick one of them.
    add_preset(tmp_path, {**LANDING, "name": "aaa"})
    add_preset(tmp_path, {**LANDING, "name": "bbb"})
    twins = load_catalog(tmp_path).presets
    for prompt in ("Create a landing page for my product", "Create a landing page for my produkt", "waitlist signup"):
        match = match_prompt(prompt, twins)
        assert (match.preset, match.method) == (None, "none"), prompt


def test_no_presets_never_match() -> None:
    assert match_prompt("Build me a personal portfolio website", ()).method == "none"


def test_a_thousand_matches_are_fast(presets: tuple[Preset, ...]) -> None:
    prompts = [
        "ＢＵＩＬＤ me a personal portfolio website！",
        "Build me a personal portfolo website",
        "a corporate site for my accounting firm with services and about us",
        "做一个摄影师的作品集",
        "write a python script that sorts numbers",
    ] * 200
    match_prompt("warm up the cached matcher", presets)
    started = time.perf_counter()
    for prompt in prompts:
        match_prompt(prompt, presets)
    elapsed = time.perf_counter() - started
    # The target is well under 100 ms; the bound leaves room for a slow, busy CI machine.
    assert elapsed < 0.5, f"1000 matches took {elapsed * 1000:.0f} ms"


def test_a_huge_prompt_is_still_fast(presets: tuple[Preset, ...]) -> None:
    started = time.perf_counter()
    match = Matcher(presets).match("portfolio " + "lorem ipsum dolor " * 1200)
    assert time.perf_counter() - started < 0.5
    assert match.method == "none"


# --- copy ------------------------------------------------------------------------------------


def test_workspace_is_empty(tmp_path: Path) -> None:
    assert workspace_is_empty(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    assert workspace_is_empty(tmp_path / "empty")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / ".env").write_text("x")
    assert not workspace_is_empty(tmp_path / "full")
    (tmp_path / "file").write_text("")
    assert not workspace_is_empty(tmp_path / "file")
    (tmp_path / "link").symlink_to(tmp_path / "empty")
    assert not workspace_is_empty(tmp_path / "link")


@pytest.mark.parametrize("existing", [False, True])
def test_copy_into_a_missing_or_empty_workspace(root: Path, tmp_path: Path, existing: bool) -> None:
    preset = load_preset(root / "portfolio")
    workspace = tmp_path / "workspaces" / "app1"
    if existing:
        workspace.mkdir(parents=True)
    assert copy_preset(preset, workspace, StopGate())
    assert tree_of(workspace) == VUE_FILES
    assert temp_dirs(workspace.parent) == []


def test_copy_creates_missing_parent_directories(root: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "not" / "yet" / "there"
    assert copy_preset(load_preset(root / "landing"), workspace, StopGate())
    assert tree_of(workspace) == STATIC_FILES
    assert temp_dirs(tmp_path) == []


def test_copy_keeps_permission_bits(root: Path, tmp_path: Path) -> None:
    (root / "landing" / "project" / "script.js").chmod(0o755)
    workspace = tmp_path / "ws"
    assert copy_preset(load_preset(root / "landing"), workspace, StopGate())
    assert (workspace / "script.js").stat().st_mode & 0o777 == 0o755


def test_copy_refuses_a_non_empty_workspace(root: Path, tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    (workspace / "mine.txt").write_text("user data")
    assert not copy_preset(load_preset(root / "landing"), workspace, StopGate())
    assert tree_of(workspace) == {"mine.txt": "user data"}
    assert temp_dirs(tmp_path) == []


def test_copy_skips_build_dirs_vcs_symlinks_and_special_files(root: Path, tmp_path: Path) -> None:
    project = root / "landing" / "project"
    write_files(project, {"node_modules/vite/index.js": "x", "dist/index.html": "x", "assets/dist/a.js": "x"})
    write_files(project, {".git/HEAD": "ref", "assets/.git/HEAD": "ref", "assets/logo.svg": "<svg/>"})
    (project / "linked.css").symlink_to(project / "style.css")
    (project / "outside").symlink_to(tmp_path)
    os.mkfifo(project / "pipe")
    workspace = tmp_path / "ws"
    assert copy_preset(load_preset(root / "landing"), workspace, StopGate())
    assert tree_of(workspace) == {**STATIC_FILES, "assets/logo.svg": "<svg/>"}
    assert sorted(os.listdir(workspace)) == ["assets", "index.html", "script.js", "style.css"]


def test_a_closed_gate_copies_nothing(root: Path, tmp_path: Path) -> None:
    gate = StopGate()
    gate.close(StopReason.USER_STOP)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    with pytest.raises(RunCancelled):
        copy_preset(load_preset(root / "portfolio"), workspace, gate)
    assert os.listdir(workspace) == []
    assert temp_dirs(tmp_path) == []


def copying_with(monkeypatch: pytest.MonkeyPatch, after_each: Callable[[int], object]) -> None:
    """Wrap the per-file copy: ``after_each(n)`` runs after the n-th file is copied."""
    real_copy = copier._copy_file
    count = 0

    def counting_copy(source: Path, target: Path) -> None:
        nonlocal count
        real_copy(source, target)
        count += 1
        after_each(count)

    monkeypatch.setattr(copier, "_copy_file", counting_copy)


@pytest.mark.parametrize("existing", [False, True])
def test_a_stop_midway_leaves_the_workspace_untouched(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, existing: bool
) -> None:
    gate = StopGate()
    copied: list[int] = []

    def stop_after_two(count: int) -> None:
        copied.append(count)
        if count == 2:
            gate.close(StopReason.USER_STOP)

    copying_with(monkeypatch, stop_after_two)
    workspace = tmp_path / "ws"
    if existing:
        workspace.mkdir()
    with pytest.raises(RunCancelled):
        copy_preset(load_preset(root / "portfolio"), workspace, gate)
    assert copied == [1, 2]  # the copy stopped at the next file, not at the end
    assert os.path.isdir(workspace) is existing
    assert not existing or os.listdir(workspace) == []
    assert temp_dirs(tmp_path) == []


def test_a_stop_after_the_last_file_still_refuses_the_commit(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = StopGate()
    copying_with(monkeypatch, lambda count: gate.close(StopReason.USER_STOP) if count == 3 else None)
    workspace = tmp_path / "ws"
    with pytest.raises(RunCancelled):
        copy_preset(load_preset(root / "landing"), workspace, gate)  # three files: the stop lands after the copy
    assert not workspace.exists()
    assert temp_dirs(tmp_path) == []


def test_a_workspace_filled_during_the_copy_is_not_overwritten(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    copying_with(monkeypatch, lambda count: (workspace / "mine.txt").write_text("user data") if count == 1 else None)
    assert not copy_preset(load_preset(root / "landing"), workspace, StopGate())
    assert tree_of(workspace) == {"mine.txt": "user data"}
    assert temp_dirs(tmp_path) == []


def test_a_failing_copy_raises_preset_error_and_cleans_up(
    root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def fail_on_second(count: int) -> None:
        if count == 2:
            raise PermissionError(13, "Permission denied")

    copying_with(monkeypatch, fail_on_second)
    workspace = tmp_path / "ws"
    with pytest.raises(PresetError, match="cannot copy preset portfolio: Permission denied"):
        copy_preset(load_preset(root / "portfolio"), workspace, StopGate())
    assert not workspace.exists()
    assert temp_dirs(tmp_path) == []


def test_a_preset_whose_project_vanished_is_an_error(root: Path, tmp_path: Path) -> None:
    preset = load_preset(root / "landing")
    os.rename(preset.project_dir, root / "landing" / "gone")
    with pytest.raises(PresetError, match="has no project/ directory"):
        copy_preset(preset, tmp_path / "ws", StopGate())
    assert temp_dirs(tmp_path) == []


# --- check -----------------------------------------------------------------------------------


def test_good_presets_have_no_problems(root: Path) -> None:
    assert check_catalog(root) == []
    for preset in load_catalog(root).presets:
        assert check_preset(preset) == []


def test_an_html_preset_needs_only_index_html(tmp_path: Path) -> None:
    add_preset(tmp_path, {**LANDING, "name": "page", "codeGenType": "html"}, {"index.html": "<h1>hi</h1>"})
    assert check_catalog(tmp_path) == []


def project_problems(tmp_path: Path, manifest: Mapping[str, object], files: dict[str, str]) -> list[str]:
    return check_preset(load_preset(add_preset(tmp_path, manifest, files)))


@pytest.mark.parametrize(
    ("manifest", "files", "problem"),
    [
        (PORTFOLIO, {**VUE_FILES, "package.json": "{not json"}, "package.json is not valid JSON"),
        (PORTFOLIO, {**VUE_FILES, "package.json": '{"scripts": {"dev": "vite"}}'}, "package.json has no scripts.build"),
        (PORTFOLIO, {k: v for k, v in VUE_FILES.items() if k != "package.json"}, "package.json is missing"),
        (PORTFOLIO, {k: v for k, v in VUE_FILES.items() if k != "vite.config.js"}, "no Vite config"),
        (PORTFOLIO, {k: v for k, v in VUE_FILES.items() if k != "src/main.js"}, "no entry module"),
        (PORTFOLIO, {k: v for k, v in VUE_FILES.items() if k != "index.html"}, "index.html is missing"),
        (
            PORTFOLIO,
            {k: v for k, v in VUE_FILES.items() if k != "public/favicon.svg"},
            "index.html references /favicon.svg, which is missing",
        ),
        (
            PORTFOLIO,
            {**VUE_FILES, "index.html": '<img src="../secret.png"><script src="/src/main.js"></script>'},
            "index.html references ../secret.png, which is outside the project",
        ),
        (LANDING, {k: v for k, v in STATIC_FILES.items() if k != "script.js"}, "script.js is missing"),
        (
            LANDING,
            {**STATIC_FILES, "index.html": '<link rel="stylesheet" href="style.css">'},
            "index.html does not reference script.js",
        ),
        (
            LANDING,
            {**STATIC_FILES, "index.html": STATIC_FILES["index.html"] + "<img src='img/logo.png?v=2'>"},
            "index.html references img/logo.png, which is missing",
        ),
        (LANDING, {**STATIC_FILES, "node_modules/x/index.js": ""}, "node_modules must not be part of a preset"),
        (LANDING, {**STATIC_FILES, "assets/dist/a.js": ""}, "assets/dist must not be part of a preset"),
        ({**LANDING, "keywords": []}, STATIC_FILES, "keywords is empty"),
        ({**LANDING, "instruction": "  "}, STATIC_FILES, "instruction is empty"),
        ({**LANDING, "keywords": ["ok", "!!"]}, STATIC_FILES, "keyword '!!' has no letters or digits"),
    ],
)
def test_preset_problems(tmp_path: Path, manifest: dict[str, object], files: dict[str, str], problem: str) -> None:
    # A missing entry file may also show up as a broken reference from index.html; both are true.
    problems = project_problems(tmp_path, manifest, files)
    assert any(found.startswith(f"{manifest['name']}: {problem}") for found in problems), problems
    assert len(problems) <= 2, problems


def test_symlinks_in_a_project_are_problems(root: Path) -> None:
    project = root / "landing" / "project"
    (project / "copy.css").symlink_to("style.css")
    assert check_preset(load_preset(root / "landing")) == [
        "landing: copy.css is a symlink (presets are copied without symlinks)"
    ]


def test_catalog_problems_cover_load_errors_and_triggers(root: Path) -> None:
    write_manifest(root / "broken", {**LANDING, "name": "broken", "codeGenType": "svelte"})
    (root / "broken" / "project").mkdir()
    add_preset(root, {**LANDING, "name": "landing2", "triggers": ["Create a LANDING page for my product!"]})
    add_preset(root, {**LANDING, "name": "shouty", "triggers": ["?!?"], "keywords": ["shout"]})
    problems = check_catalog(root)
    assert problems == [
        "broken/template.toml: codeGenType 'svelte' must be one of html, multi_file, vue_project",
        "trigger 'create a landing page for my product' is shared by presets landing, landing2",
        "landing: trigger 'Create a landing page for my product' does not select it exactly (got none)",
        "landing2: trigger 'Create a LANDING page for my product!' does not select it exactly (got none)",
        "shouty: trigger '?!?' does not select it exactly (got none)",
    ]


def test_missing_templates_dir_fails_the_check(tmp_path: Path) -> None:
    assert len(check_catalog(tmp_path / "nowhere")) == 1


# --- CLI -------------------------------------------------------------------------------------


@pytest.fixture
def templates_env(root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RUNFORGE_TEMPLATES_DIR", str(root))
    return root


def test_cli_list(templates_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["templates", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[:3] == [
        "company  vue_project  Company website",
        "    Build a company website for my business",
        "    帮我做一个公司官网",
    ]
    assert "landing  multi_file  Product landing page" in lines
    assert len(lines) == 9


@pytest.mark.parametrize(
    ("prompt", "line"),
    [
        ("ＢＵＩＬＤ me a personal portfolio website！", "portfolio exact 1.000"),
        ("landing page for our app launch with a waitlist signup", "landing keywords 1.000"),
        ("write a python script that sorts numbers", "none"),
    ],
)
def test_cli_match(templates_env: Path, capsys: pytest.CaptureFixture[str], prompt: str, line: str) -> None:
    assert cli.main(["templates", "match", prompt]) == 0
    assert capsys.readouterr().out == line + "\n"


def test_cli_match_prints_three_decimals(templates_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["templates", "match", "Build me a personal portfolo website"]) == 0
    name, method, score = capsys.readouterr().out.split()
    assert (name, method, len(score.split(".")[1])) == ("portfolio", "fuzzy", 3)


def test_cli_check(templates_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["templates", "check"]) == 0
    assert capsys.readouterr().out == "ok: 3 presets\n"
    (templates_env / "landing" / "project" / "script.js").unlink()
    assert cli.main(["templates", "check"]) == 1
    assert capsys.readouterr().out.splitlines() == [
        "landing: index.html references ./script.js, which is missing",
        "landing: script.js is missing",
    ]


def test_cli_list_reports_load_errors(templates_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (templates_env / "junk").mkdir()
    assert cli.main(["templates", "list"]) == 1
    assert "runforge: junk: no template.toml" in capsys.readouterr().err


# --- the shipped presets ---------------------------------------------------------------------


def test_the_shipped_templates_pass_the_check() -> None:
    if not any(DEFAULT_TEMPLATES_DIR.glob("*/template.toml")):
        pytest.skip(f"no presets in {DEFAULT_TEMPLATES_DIR} yet (they are being written separately)")
    assert check_catalog(DEFAULT_TEMPLATES_DIR) == []
    names = {preset.name for preset in load_catalog(DEFAULT_TEMPLATES_DIR).presets}
    assert {"portfolio", "company", "landing"} <= names
