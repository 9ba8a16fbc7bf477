"""Code generation end to end: html / multi_file answers become files, presets seed workspaces.

Over real sockets (server thread + embedded simulator + httpx), with the real presets under
``templates/``. Only the preset-copy race at the end runs below HTTP (a stop landing inside the
copy cannot be placed from outside), with the real catalog and real threads.
"""

from __future__ import annotations

import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import cli
from app.codegen.fences import files_from_answer
from app.control.cancel import RunCancelled, StopGate, StopReason
from app.presets import Preset, copy_preset, load_catalog
from app.settings import DEFAULT_TEMPLATES_DIR
from app.workspace.fs import SKIP_DIRS
from tests.support import (
    HANG_TIMEOUT_S,
    TERMINAL,
    Event,
    ServerThread,
    collect,
    gen_url,
    open_stream,
    text_of,
    wait_for_status,
)

CORE_FILES = ("index.html", "style.css", "script.js")
SHA = re.compile(r"[0-9a-f]{40}")
PORTFOLIO_TRIGGER = "Build me a personal portfolio website"
COMPANY_TRIGGER_ZH = "帮我做一个公司官网"
LANDING_TRIGGER = "Make a landing page for my product launch"


# -- helpers -----------------------------------------------------------------------------------


async def new_app(client: httpx.AsyncClient, code_gen_type: str) -> str:
    """A new app per run: the simulator takes its scenario from an app's first message."""
    response = await client.post("/apps", json={"name": f"{code_gen_type} app", "codeGenType": code_gen_type})
    assert response.status_code == 201, response.text
    app_id: str = response.json()["id"]
    return app_id


async def run_to_end(client: httpx.AsyncClient, url: str) -> list[Event]:
    async with open_stream(client, "GET", url) as (response, events):
        assert response.status_code == 200, response
        seen = await collect(events)
    assert seen, "the stream ended without any event"
    assert seen[-1].event in TERMINAL, seen[-1]
    return seen


def named(events: list[Event]) -> list[Event]:
    """Everything but the text deltas."""
    return [e for e in events if e.event != "message"]


def payload(event: Event) -> dict[str, Any]:
    """An event's data without the runId every event carries."""
    return {k: v for k, v in event.data.items() if k != "runId"}


def template_event(events: list[Event]) -> dict[str, Any]:
    [template] = [e for e in events if e.event == "template"]
    return payload(template)


def files_in(root: Path) -> dict[str, bytes]:
    """Every regular file under root (relative POSIX path -> bytes); {} for a missing root."""
    if not root.exists():
        return {}
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in root.rglob("*") if path.is_file()}


def preset_files(preset: Preset) -> dict[str, bytes]:
    """The files a copy of the preset holds (build and VCS directories are never copied)."""
    files = files_in(preset.project_dir)
    return {path: data for path, data in files.items() if not SKIP_DIRS.intersection(path.split("/"))}


def workspace(server: ServerThread, app_id: str) -> Path:
    return server.settings.workspaces_dir / app_id


def preset(server: ServerThread, name: str) -> Preset:
    found = server.services.presets.get(name)
    assert found is not None, f"no preset {name!r} in {server.settings.templates_dir}"
    return found


async def stop(client: httpx.AsyncClient, run_id: str) -> None:
    response = await client.post("/app/chat/stop", json={"runId": run_id})
    assert response.status_code == 202, response.text


async def checkpoint_kinds(client: httpx.AsyncClient, app_id: str) -> list[str]:
    response = await client.get(f"/apps/{app_id}/checkpoints")
    assert response.status_code == 200, response.text
    return [c["kind"] for c in response.json()]


async def messages(client: httpx.AsyncClient, app_id: str) -> list[tuple[str, str]]:
    response = await client.get(f"/apps/{app_id}/messages")
    assert response.status_code == 200, response.text
    return [(m["role"], m["content"]) for m in response.json()]


def marker(name: str) -> str:
    return f"[Runforge template: {name}]"


# -- html / multi_file -------------------------------------------------------------------------


async def test_multi_file_run_end_to_end(server: ServerThread, client: httpx.AsyncClient) -> None:
    app_id = await new_app(client, "multi_file")
    message = "a click counter site"
    seen = await run_to_end(client, gen_url(app_id, message, runId="r-multi"))

    assert [e.event for e in named(seen)] == ["run", "template", *["code_block"] * 6, "done"]
    assert payload(seen[0]) == {"appId": app_id}
    chosen = template_event(seen)
    assert (chosen["name"], chosen["method"], chosen["copied"]) == (None, "none", False)
    assert chosen["score"] < 0.7
    # Prose comes first, then each block opens and closes in order.
    first_block = next(i for i, e in enumerate(seen) if e.event == "code_block")
    assert any(e.event == "message" for e in seen[:first_block])
    blocks = [payload(e) for e in seen if e.event == "code_block"]
    assert blocks == [
        {"lang": "html", "file": "index.html", "status": "open", "chars": 0},
        {"lang": "html", "file": "index.html", "status": "closed", "chars": blocks[1]["chars"]},
        {"lang": "css", "file": "style.css", "status": "open", "chars": 0},
        {"lang": "css", "file": "style.css", "status": "closed", "chars": blocks[3]["chars"]},
        {"lang": "js", "file": "script.js", "status": "open", "chars": 0},
        {"lang": "js", "file": "script.js", "status": "closed", "chars": blocks[5]["chars"]},
    ]

    answer = text_of(seen)
    expected = files_from_answer(answer, "multi_file")
    assert list(expected) == list(CORE_FILES)
    for closed in blocks[1::2]:
        assert closed["chars"] == len(expected[closed["file"]]) > 0
    # The events are live: each arrives right after the text that completes its fence line.
    positions = [i for i, e in enumerate(seen) if e.event == "code_block"]
    for previous, at in zip([first_block - 1, *positions], positions, strict=False):
        block = seen[at].data
        fence_line = f"```{block['lang']}\n" if block["status"] == "open" else f"{expected[block['file']]}\n```\n"
        assert fence_line in text_of(seen[:at]), block
        assert fence_line not in text_of(seen[:previous]), block

    done = payload(seen[-1])
    assert done == {
        "finishReason": "stop",
        "steps": 1,
        "toolCalls": 0,
        "files": list(CORE_FILES),
        "previewUrl": f"/apps/{app_id}/preview/",
        "checkpoint": done["checkpoint"],
    }
    assert SHA.fullmatch(done["checkpoint"])

    written = files_in(workspace(server, app_id))
    assert written == {name: content.encode() for name, content in expected.items()}
    assert await messages(client, app_id) == [("user", message), ("ai", answer)]
    checkpoints = (await client.get(f"/apps/{app_id}/checkpoints")).json()
    assert (checkpoints[0]["kind"], checkpoints[0]["runId"], checkpoints[0]["sha"]) == (
        "run",
        "r-multi",
        done["checkpoint"],
    )
    # The preview serves what was written.
    preview = await client.get(f"/apps/{app_id}/preview/", follow_redirects=True)  # to the preview link
    assert preview.status_code == 200
    assert preview.text == expected["index.html"]


async def test_html_run_writes_one_self_contained_file(server: ServerThread, client: httpx.AsyncClient) -> None:
    app_id = await new_app(client, "html")
    seen = await run_to_end(client, gen_url(app_id, "a click counter", runId="r-html"))

    assert [e.event for e in named(seen)] == ["run", "template", "code_block", "code_block", "done"]
    opened, closed = (payload(e) for e in seen if e.event == "code_block")
    assert opened == {"lang": "html", "file": "index.html", "status": "open", "chars": 0}
    assert (closed["lang"], closed["file"], closed["status"]) == ("html", "index.html", "closed")
    assert seen[-1].data["files"] == ["index.html"]
    assert seen[-1].data["previewUrl"] == f"/apps/{app_id}/preview/"
    assert SHA.fullmatch(seen[-1].data["checkpoint"])

    written = files_in(workspace(server, app_id))
    assert list(written) == ["index.html"]
    page = written["index.html"].decode()
    assert page == files_from_answer(text_of(seen), "html")["index.html"]
    assert len(page) == closed["chars"]
    assert "<style>" in page
    assert "<script>" in page
    assert 'href="style.css"' not in page
    assert 'src="script.js"' not in page


@pytest.mark.parametrize("stop_at", ["open", "closed"])
async def test_interrupted_multi_file_run_writes_nothing(
    server: ServerThread, client: httpx.AsyncClient, stop_at: str
) -> None:
    app_id = await new_app(client, "multi_file")
    url = gen_url(app_id, "a counter [sim:page pace=20]", runId="r-cut")
    async with open_stream(client, "GET", url) as (_, events):
        # At "closed" index.html is complete in the answer: still, only a completed run writes it.
        before = await collect(events, until=lambda e: e.event == "code_block" and e.data["status"] == stop_at)
        assert (before[-1].data["lang"], before[-1].data["file"]) == ("html", "index.html")
        await stop(client, "r-cut")
        after = await collect(events)
    assert after[-1].event == "interrupted"
    assert "done" not in [e.event for e in after]
    await wait_for_status(client, "r-cut", "interrupted")

    root = workspace(server, app_id)
    assert not any((root / name).exists() for name in CORE_FILES)
    assert files_in(root) == {}
    assert "run" not in await checkpoint_kinds(client, app_id)
    assert await messages(client, app_id) == []


@pytest.mark.parametrize("scenario", ["[sim:error_midstream]", "[sim:http_error status=500]"])
async def test_failed_multi_file_run_writes_nothing(
    server: ServerThread, client: httpx.AsyncClient, scenario: str
) -> None:
    app_id = await new_app(client, "multi_file")
    root = workspace(server, app_id)
    # Files from before (as a user would have them): a failed run leaves them exactly as they are.
    root.mkdir(parents=True, exist_ok=True)
    before = {"index.html": b"<!doctype html><p>mine</p>\n", "style.css": b"p { color: red }\n"}
    for name, data in before.items():
        (root / name).write_bytes(data)

    seen = await run_to_end(client, gen_url(app_id, f"a counter {scenario}", runId="r-broken"))
    assert seen[-1].event == "failed"
    assert seen[-1].data["error"]["code"] == "upstream_error"
    await wait_for_status(client, "r-broken", "failed")

    assert files_in(root) == before
    assert "run" not in await checkpoint_kinds(client, app_id)
    assert await messages(client, app_id) == []


async def test_follow_up_run_sees_the_current_files(server: ServerThread, client: httpx.AsyncClient) -> None:
    app_id = await new_app(client, "multi_file")
    first = await run_to_end(client, gen_url(app_id, "a click counter", runId="r-one"))
    assert first[-1].event == "done"
    index_html = (workspace(server, app_id) / "index.html").read_text()

    second = await run_to_end(client, gen_url(app_id, "make the button red", runId="r-two"))
    assert second[-1].event == "done"

    [first_request] = await server.sim_records("r-one", lambda rs: len(rs) == 1)
    [second_request] = await server.sim_records("r-two", lambda rs: len(rs) == 1)
    assert first_request.last_user_message == "a click counter"  # nothing there yet: the bare message
    prompt = second_request.last_user_message
    assert prompt.startswith("make the button red\n\n")
    assert "The app's current files" in prompt
    assert f"index.html:\n```html\n{index_html}\n```" in prompt
    for name, lang in (("style.css", "css"), ("script.js", "js")):
        content = (workspace(server, app_id) / name).read_text()
        assert f"{name}:\n```{lang}\n{content}\n```" in prompt
    # Only the user's words are stored, never the files that rode along.
    assert [m for m in await messages(client, app_id) if m[0] == "user"] == [
        ("user", "a click counter"),
        ("user", "make the button red"),
    ]


# -- presets -----------------------------------------------------------------------------------


async def test_a_vue_trigger_copies_the_preset_and_runs_template_edit(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    portfolio = preset(server, "portfolio")
    assert PORTFOLIO_TRIGGER in portfolio.triggers
    seen = await run_to_end(client, gen_url(app_id, PORTFOLIO_TRIGGER, runId="r-portfolio"))

    assert template_event(seen) == {"name": "portfolio", "score": 1.0, "method": "exact", "copied": True}
    assert [e.event for e in named(seen)] == [
        "run",
        "template",
        *["tool_call", "tool_result"] * 3,
        "build",
        "done",
    ]
    calls = [e.data["name"] for e in seen if e.event == "tool_call"]
    assert calls == ["list_dir", "read_file", "exit"]
    assert all(e.data["ok"] for e in seen if e.event == "tool_result")
    [build] = [payload(e) for e in seen if e.event == "build"]
    assert build["status"] == "skipped"
    done = payload(seen[-1])
    assert (done["finishReason"], done["files"], done["previewUrl"]) == ("exit", [], None)
    assert SHA.fullmatch(done["checkpoint"])

    # The workspace is the preset, byte for byte (template_edit changes nothing).
    expected = preset_files(portfolio)
    assert "package.json" in expected
    assert "node_modules" not in {path.split("/")[0] for path in expected}
    assert files_in(workspace(server, app_id)) == expected

    records = await server.sim_records("r-portfolio", lambda rs: len(rs) == 3 and not any(r.is_open for r in rs))
    assert {r.scenario for r in records} == {"template_edit"}
    for record in records:
        assert record.last_user_message.startswith(PORTFOLIO_TRIGGER)
        assert marker("portfolio") in record.last_user_message
        assert portfolio.instruction.strip() in record.last_user_message
    # The instruction went to the model only: the history holds the user's own words.
    assert await messages(client, app_id) == [("user", PORTFOLIO_TRIGGER), ("ai", text_of(seen))]


@pytest.mark.parametrize(
    ("prompt", "name", "method"),
    [
        (COMPANY_TRIGGER_ZH, "company", "exact"),
        ("a corporate site for my accounting firm with services and about us", "company", "keywords"),
        ("write a haiku about tea [sim:long_text tokens=5]", None, "none"),
    ],
)
async def test_chinese_triggers_keywords_and_misses(
    server: ServerThread, client: httpx.AsyncClient, prompt: str, name: str | None, method: str
) -> None:
    app_id = await new_app(client, "vue_project")
    seen = await run_to_end(client, gen_url(app_id, prompt, runId="r-match"))
    assert seen[-1].event == "done"
    chosen = template_event(seen)
    assert (chosen["name"], chosen["method"], chosen["copied"]) == (name, method, name is not None)
    root = workspace(server, app_id)
    [record, *_] = await server.sim_records("r-match", lambda rs: len(rs) >= 1)
    if name is None:
        assert chosen["score"] < 0.7
        assert files_in(root) == {}  # long_text writes nothing, and nothing was copied
        assert "[Runforge template:" not in record.last_user_message
    else:
        assert chosen["score"] == 1.0 if method == "exact" else chosen["score"] >= 0.7
        assert files_in(root) == preset_files(preset(server, name))
        assert marker(name) in record.last_user_message
        assert record.scenario == "template_edit"
    if method == "exact":
        assert prompt in preset(server, "company").triggers


async def test_a_preset_is_copied_only_into_an_empty_workspace(
    server: ServerThread, client: httpx.AsyncClient, app_id: str
) -> None:
    root = workspace(server, app_id)
    root.mkdir(parents=True, exist_ok=True)
    (root / "notes.txt").write_bytes(b"my notes\n")

    seen = await run_to_end(client, gen_url(app_id, PORTFOLIO_TRIGGER, runId="r-notes"))
    assert seen[-1].event == "done"
    assert template_event(seen) == {"name": "portfolio", "score": 1.0, "method": "exact", "copied": False}

    written_by_tools = {e.data["args"]["path"] for e in seen if e.event == "tool_call" and "path" in e.data["args"]}
    files = files_in(root)
    assert files["notes.txt"] == b"my notes\n"
    # Nothing of the preset came in: every other file is one the model wrote with a tool.
    assert set(files) - {"notes.txt"} <= written_by_tools
    portfolio = preset_files(preset(server, "portfolio"))
    assert "src/components/HeroSection.vue" in portfolio
    assert not (set(portfolio) - written_by_tools) & set(files)
    assert all(files[path] != data for path, data in portfolio.items() if path in files)

    records = await server.sim_records("r-notes", lambda rs: len(rs) >= 1)
    for record in records:
        assert "[Runforge template:" not in record.last_user_message
        assert preset(server, "portfolio").instruction.strip() not in record.last_user_message
    assert {r.scenario for r in records} == {"vue_app"}


async def test_the_landing_preset_seeds_a_multi_file_app(server: ServerThread, client: httpx.AsyncClient) -> None:
    landing = preset(server, "landing")
    app_id = await new_app(client, "multi_file")
    seen = await run_to_end(client, gen_url(app_id, LANDING_TRIGGER, runId="r-landing"))

    assert template_event(seen) == {"name": "landing", "score": 1.0, "method": "exact", "copied": True}
    assert seen[-1].event == "done"
    assert seen[-1].data["files"] == list(CORE_FILES)

    [record] = await server.sim_records("r-landing", lambda rs: len(rs) == 1 and not rs[0].is_open)
    prompt = record.last_user_message
    assert prompt.startswith(LANDING_TRIGGER)
    assert marker("landing") in prompt
    assert landing.instruction.strip() in prompt
    assert "The app's current files" in prompt
    originals = preset_files(landing)
    assert set(originals) == set(CORE_FILES)
    for name, lang in (("index.html", "html"), ("style.css", "css"), ("script.js", "js")):
        assert f"{name}:\n```{lang}\n{originals[name].decode()}\n```" in prompt

    # On completion the answer's blocks replaced the preset's three files.
    answer = files_from_answer(text_of(seen), "multi_file")
    written = files_in(workspace(server, app_id))
    assert written == {name: content.encode() for name, content in answer.items()}
    assert all(written[name] != originals[name] for name in CORE_FILES)


async def test_a_vue_preset_is_never_copied_into_a_multi_file_app(
    server: ServerThread, client: httpx.AsyncClient
) -> None:
    app_id = await new_app(client, "multi_file")
    seen = await run_to_end(client, gen_url(app_id, PORTFOLIO_TRIGGER, runId="r-filter"))
    assert seen[-1].event == "done"
    chosen = template_event(seen)
    assert chosen["name"] is None or preset(server, chosen["name"]).code_gen_type == "multi_file"
    assert chosen["name"] != "portfolio"
    files = files_in(workspace(server, app_id))
    assert "package.json" not in files
    assert not any(path.startswith("src/") for path in files)
    assert set(files) == set(CORE_FILES)
    [record] = await server.sim_records("r-filter", lambda rs: len(rs) == 1)
    assert marker("portfolio") not in record.last_user_message


# -- codeGenType on create ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "code_gen_type", "rule"),
    [
        ({"initPrompt": PORTFOLIO_TRIGGER}, "vue_project", "template:portfolio"),
        ({"initPrompt": LANDING_TRIGGER}, "multi_file", "template:landing"),
        ({"initPrompt": "build a vue todo app"}, "vue_project", "vue-keyword"),
        ({"initPrompt": "a single page about cats"}, "html", "single-file"),
        ({"name": "my app"}, "multi_file", "default"),
        ({"name": "x", "initPrompt": "build a vue todo app", "codeGenType": "html"}, "html", "given"),
        ({"initPrompt": PORTFOLIO_TRIGGER, "codeGenType": "multi_file"}, "multi_file", "given"),
    ],
)
async def test_code_gen_type_is_inferred_on_create(
    client: httpx.AsyncClient, body: dict[str, str], code_gen_type: str, rule: str
) -> None:
    response = await client.post("/apps", json=body)
    assert response.status_code == 201, response.text
    created = response.json()
    assert (created["codeGenType"], created["codeGenTypeRule"]) == (code_gen_type, rule)
    stored = (await client.get(f"/apps/{created['id']}")).json()
    assert stored["codeGenType"] == code_gen_type


# -- the preset copy against a stop ------------------------------------------------------------

RACE_ROUNDS = 30


def copy_against_a_stop(preset: Preset, target: Path, stop_after_s: float) -> bool | RunCancelled:
    """Copy in a worker thread while this thread closes the gate after stop_after_s; the copy's outcome."""
    gate = StopGate()
    start = threading.Barrier(2)
    outcome: list[bool | RunCancelled] = []

    def copy() -> None:
        start.wait(HANG_TIMEOUT_S)
        try:
            outcome.append(copy_preset(preset, target, gate))
        except RunCancelled as exc:
            outcome.append(exc)

    worker = threading.Thread(target=copy, name="preset-copy")
    worker.start()
    start.wait(HANG_TIMEOUT_S)
    time.sleep(stop_after_s)  # not synchronisation: it picks the moment the stop lands
    gate.close(StopReason.USER_STOP)
    worker.join(HANG_TIMEOUT_S)
    assert not worker.is_alive(), "the copy hung"
    [result] = outcome
    return result


def test_a_stop_during_the_preset_copy_leaves_nothing_or_everything(tmp_path: Path) -> None:
    portfolio = load_catalog(DEFAULT_TEMPLATES_DIR).get("portfolio")
    assert portfolio is not None
    complete = preset_files(portfolio)
    # How long a whole copy takes here, so the stops spread over before, during and after it.
    started = time.perf_counter()
    assert copy_preset(portfolio, tmp_path / "timing" / "ws", StopGate())
    copy_s = time.perf_counter() - started
    assert files_in(tmp_path / "timing" / "ws") == complete

    rng = random.Random(1234)
    outcomes: list[str] = []
    for round_no in range(RACE_ROUNDS):
        parent = tmp_path / f"round-{round_no}"
        parent.mkdir()
        target = parent / "ws"
        existing = bool(round_no % 2)
        if existing:
            target.mkdir()  # an existing empty workspace: the rename replaces it
        result = copy_against_a_stop(portfolio, target, rng.uniform(0.0, 1.5 * copy_s))
        if result is True:
            outcomes.append("copied")
            assert files_in(target) == complete, f"round {round_no}: a partial copy"
        else:
            assert isinstance(result, RunCancelled), f"round {round_no}: {result!r}"
            outcomes.append("stopped")
            assert target.exists() is existing, f"round {round_no}"
            assert not existing or os.listdir(target) == [], f"round {round_no}: {os.listdir(target)}"
        assert os.listdir(parent) in ([], ["ws"]), f"round {round_no}: left behind {os.listdir(parent)}"
    # Some stops landed inside the copy (how many copies completed first depends on the machine).
    assert "stopped" in outcomes, outcomes


# -- CLI -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("prompt", "line"),
    [
        (PORTFOLIO_TRIGGER, "portfolio exact 1.000"),
        (COMPANY_TRIGGER_ZH, "company exact 1.000"),
        (LANDING_TRIGGER, "landing exact 1.000"),
        ("a corporate site for my accounting firm with services and about us", "company keywords 1.000"),
        ("write a haiku about tea", "none"),
    ],
)
def test_cli_templates_match_with_the_real_presets(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], prompt: str, line: str
) -> None:
    monkeypatch.setenv("RUNFORGE_TEMPLATES_DIR", str(DEFAULT_TEMPLATES_DIR))
    assert cli.main(["templates", "match", prompt]) == 0
    captured = capsys.readouterr()
    assert captured.out == line + "\n"
    assert captured.err == ""
