"""The LLM-facing tools: schemas, argument validation, confinement and the stop gate."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from app.control.cancel import RunCancelled, StopGate, StopReason
from app.tools import MAX_ARGUMENT_CHARS, TOOL_SPECS, ToolResult, execute_tool
from app.workspace import fs
from app.workspace.fs import MAX_DIR_ENTRIES, MAX_WRITE_BYTES, WorkspaceError
from tests.workspace_kit import HOSTILE, ClosingGate, make_workspace

PATH_TOOLS = ["list_dir", "read_file", "write_file", "modify_file", "delete_file"]


def snapshot(base: Path) -> dict[str, bytes | None]:
    """Every path under ``base`` (dirs map to None, links to their target), links not followed."""
    result: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(base).as_posix()
            if path.is_symlink():
                result[rel] = os.readlink(path).encode()
            else:
                result[rel] = None if path.is_dir() else path.read_bytes()
    return result


def args_for(tool: str, path: str) -> str:
    extra: dict[str, dict[str, str]] = {
        "write_file": {"content": "pwned"},
        "modify_file": {"old_text": "secret", "new_text": "pwned"},
    }
    return json.dumps({"path": path, **extra.get(tool, {})})


async def run(name: str, arguments: dict[str, Any] | str, ws: Path, gate: StopGate) -> ToolResult:
    raw = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return await execute_tool(name, raw, ws, gate)


# --- schemas -----------------------------------------------------------------------------------


def test_tool_specs_shape() -> None:
    functions = {spec["function"]["name"]: spec["function"] for spec in TOOL_SPECS}
    assert all(spec["type"] == "function" for spec in TOOL_SPECS)
    expected = {
        "list_dir": ({"path"}, []),
        "read_file": ({"path"}, ["path"]),
        "write_file": ({"path", "content"}, ["path", "content"]),
        "modify_file": ({"path", "old_text", "new_text"}, ["path", "old_text", "new_text"]),
        "delete_file": ({"path"}, ["path"]),
        "exit": (set(), []),
    }
    assert set(functions) == set(expected)
    for name, (properties, required) in expected.items():
        parameters = functions[name]["parameters"]
        assert parameters["type"] == "object"
        assert set(parameters["properties"]) == properties
        assert parameters["required"] == required
        assert all(prop["type"] == "string" for prop in parameters["properties"].values())
        assert functions[name]["description"]
    assert functions["list_dir"]["parameters"]["properties"]["path"]["default"] == "."
    json.dumps(TOOL_SPECS)  # must be serialisable as-is


# --- confinement -------------------------------------------------------------------------------


@pytest.mark.parametrize("tool", PATH_TOOLS)
@pytest.mark.parametrize("user_path", HOSTILE)
async def test_hostile_paths_refused_by_every_tool(tmp_path: Path, tool: str, user_path: str) -> None:
    ws = make_workspace(tmp_path)
    before = snapshot(tmp_path)
    result = await execute_tool(tool, args_for(tool, user_path), ws, StopGate())
    assert not result.ok
    assert not result.side_effect
    assert result.output.startswith("error: ")
    assert "top secret" not in result.output
    assert str(tmp_path) not in result.output
    assert snapshot(tmp_path) == before  # nothing created, changed or deleted, inside or out
    assert os.listdir(tmp_path / "sibling") == []
    assert (tmp_path / "outside" / "secret.txt").read_text() == "top secret"


async def test_tilde_is_a_literal_name(ws: Path, gate: StopGate) -> None:
    result = await run("write_file", {"path": "~/notes.txt", "content": "hi"}, ws, gate)
    assert result.ok
    assert (ws / "~" / "notes.txt").read_text() == "hi"


# --- happy paths -------------------------------------------------------------------------------


async def test_write_read_modify_delete_roundtrip(ws: Path, gate: StopGate) -> None:
    written = await run("write_file", {"path": "src/components/Hi.vue", "content": "a" * 1229}, ws, gate)
    assert written == ToolResult(
        True, "wrote 1229 bytes to src/components/Hi.vue", "wrote src/components/Hi.vue (1.2 KB)", False, True
    )
    read = await run("read_file", {"path": "./src/components/Hi.vue"}, ws, gate)
    assert (read.ok, read.output, read.summary, read.side_effect) == (
        True,
        "a" * 1229,
        "read src/components/Hi.vue",
        False,
    )
    modified = await run(
        "modify_file", {"path": "src/components/Hi.vue", "old_text": "a" * 1229, "new_text": "b"}, ws, gate
    )
    assert modified.ok
    assert modified.side_effect
    assert modified.summary == "modified src/components/Hi.vue"
    assert (ws / "src/components/Hi.vue").read_text() == "b"
    deleted = await run("delete_file", {"path": "src/components/Hi.vue"}, ws, gate)
    assert (deleted.ok, deleted.side_effect, deleted.summary) == (True, True, "deleted src/components/Hi.vue")
    assert not (ws / "src/components/Hi.vue").exists()


async def test_list_dir_output(ws: Path, gate: StopGate) -> None:
    (ws / "src" / "empty").mkdir()
    result = await run("list_dir", {"path": "src"}, ws, gate)
    assert result.ok
    assert not result.side_effect
    lines = result.output.splitlines()
    assert lines[0] == "contents of src:"
    assert lines[1:] == ["App.vue  (17 B)", "empty/", "main.js  (17 B)", "main.ts  (17 B)"]
    assert result.summary == "listed src (4 entries)"
    root = await run("list_dir", {}, ws, gate)  # path defaults to "."
    assert "out_dir  (symlink)" in root.output.splitlines()
    assert "secret.txt" not in root.output
    empty = await run("list_dir", {"path": "src/empty"}, ws, gate)
    assert empty.output == "contents of src/empty:\n(empty directory)"


async def test_list_dir_truncation_marker(ws: Path, gate: StopGate) -> None:
    many = ws / "many"
    many.mkdir()
    for index in range(MAX_DIR_ENTRIES + 1):
        (many / f"f{index:04d}").touch()
    result = await run("list_dir", {"path": "many"}, ws, gate)
    lines = result.output.splitlines()
    assert len(lines) == 1 + MAX_DIR_ENTRIES + 1
    assert lines[-1].startswith("[... more entries not shown")
    assert "f1000" not in result.output


@pytest.mark.parametrize("raw", ["{}", "", "  "])
async def test_exit(ws: Path, gate: StopGate, raw: str) -> None:
    result = await execute_tool("exit", raw, ws, gate)
    assert result.ok
    assert result.is_exit
    assert not result.side_effect


# --- the stop gate -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("write_file", {"path": "new.txt", "content": "x"}),
        ("write_file", {"path": "deep/new.txt", "content": "x"}),
        ("modify_file", {"path": "index.html", "old_text": "core", "new_text": "x"}),
        ("delete_file", {"path": "vite.config.js.bak"}),
        ("read_file", {"path": "index.html"}),
        ("list_dir", {"path": "."}),
        ("exit", {}),
        ("no_such_tool", {}),
        ("read_file", "not json"),
    ],
)
async def test_closed_gate_starts_no_tool(tmp_path: Path, tool: str, arguments: dict[str, Any] | str) -> None:
    ws = make_workspace(tmp_path)
    (ws / "vite.config.js.bak").write_text("backup")
    before = snapshot(tmp_path)
    gate = StopGate()
    gate.close(StopReason.CLIENT_DISCONNECT)
    with pytest.raises(RunCancelled):
        await run(tool, arguments, ws, gate)
    assert snapshot(tmp_path) == before


async def test_stop_during_write_propagates_and_leaves_nothing(ws: Path) -> None:
    before = snapshot(ws)
    with pytest.raises(RunCancelled):
        await run("write_file", {"path": "src/App.vue", "content": "new"}, ws, ClosingGate())
    assert snapshot(ws) == before  # old content kept, no temp file left behind


async def test_stop_during_delete_propagates(ws: Path) -> None:
    (ws / "old.txt").write_text("x")
    with pytest.raises(RunCancelled):
        await run("delete_file", {"path": "old.txt"}, ws, ClosingGate())
    assert (ws / "old.txt").exists()


# --- bad arguments -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "raw", "fragment"),
    [
        ("read_file", "{", "not valid JSON"),
        ("read_file", "{'path': 'a'}", "not valid JSON"),
        ("read_file", "[]", "must be a JSON object, got array"),
        ("read_file", '"index.html"', "must be a JSON object, got string"),
        ("read_file", "1", "must be a JSON object, got number"),
        ("read_file", "null", "must be a JSON object, got null"),
        ("read_file", "{}", "missing required argument 'path'"),
        ("write_file", '{"path": "a.txt"}', "missing required argument 'content'"),
        ("read_file", '{"path": 1}', "'path' must be a string, got number"),
        ("read_file", '{"path": null}', "'path' must be a string, got null"),
        ("read_file", '{"path": ["a"]}', "'path' must be a string, got array"),
        ("write_file", '{"path": "a.txt", "content": true}', "'content' must be a string, got boolean"),
        ("list_dir", '{"path": {"x": 1}}', "'path' must be a string, got object"),
        ("read_file", '{"path": "index.html", "mode": "rb"}', "unexpected argument(s) mode"),
        ("read_file", "[" * 100_000 + "]" * 100_000, "arguments"),
        ("write_file", "x" * (MAX_ARGUMENT_CHARS + 1), "too large"),
        ("read_file", "", "missing required argument 'path'"),
    ],
)
async def test_bad_arguments_are_reported(ws: Path, gate: StopGate, tool: str, raw: str, fragment: str) -> None:
    before = snapshot(ws)
    result = await execute_tool(tool, raw, ws, gate)
    assert not result.ok
    assert fragment in result.output
    assert result.output.startswith(f"error: invalid arguments for {tool}: ")
    assert result.summary.startswith("error: ")
    assert len(result.summary) <= 100
    assert snapshot(ws) == before


async def test_unknown_tool(ws: Path, gate: StopGate) -> None:
    result = await run("rm_rf", {"path": "."}, ws, gate)
    assert not result.ok
    assert "unknown tool 'rm_rf'" in result.output
    assert "write_file" in result.output  # tells the model what exists


async def test_huge_content_refused(ws: Path, gate: StopGate) -> None:
    result = await run("write_file", {"path": "big.txt", "content": "a" * (MAX_WRITE_BYTES + 1)}, ws, gate)
    assert not result.ok
    assert "too large" in result.output
    assert not (ws / "big.txt").exists()


# --- workspace errors become results -----------------------------------------------------------


@pytest.mark.parametrize(
    ("tool", "arguments", "fragment"),
    [
        ("read_file", {"path": "missing.txt"}, "no such file: missing.txt"),
        ("read_file", {"path": "src"}, "src is a directory"),
        ("list_dir", {"path": "index.html"}, "not a directory"),
        ("modify_file", {"path": "index.html", "old_text": "zzz", "new_text": "y"}, "old_text not found"),
        ("delete_file", {"path": "src/App.vue"}, "core project file"),
        ("delete_file", {"path": "package.json"}, "core project file"),
        ("delete_file", {"path": "src"}, "is a directory"),
        ("write_file", {"path": "src", "content": "x"}, "is a directory"),
    ],
)
async def test_workspace_errors_are_results(
    ws: Path, gate: StopGate, tool: str, arguments: dict[str, str], fragment: str
) -> None:
    before = snapshot(ws)
    result = await run(tool, arguments, ws, gate)
    assert not result.ok
    assert not result.side_effect
    assert fragment in result.output
    assert snapshot(ws) == before


async def test_modify_ambiguous_through_tool(ws: Path, gate: StopGate) -> None:
    (ws / "a.txt").write_text("x = 1\nx = 1\n")
    result = await run("modify_file", {"path": "a.txt", "old_text": "x = 1", "new_text": "y"}, ws, gate)
    assert result.output == "error: old_text occurs 2 times in a.txt; make it unique"
    assert (ws / "a.txt").read_text() == "x = 1\nx = 1\n"


async def test_os_error_does_not_leak_host_paths(tmp_path: Path, gate: StopGate) -> None:
    ws = make_workspace(tmp_path)
    (ws / "loop").symlink_to("loop")  # resolves "inside" but every open fails with ELOOP
    for tool in ["read_file", "list_dir", "write_file"]:
        result = await execute_tool(tool, args_for(tool, "loop"), ws, gate)
        assert not result.ok, tool
        assert "loop" in result.output
        assert str(tmp_path) not in result.output
        assert str(tmp_path) not in result.summary
    assert (ws / "loop").is_symlink()


MANAGED = ["dist/index.html", "node_modules/vue/index.js", ".git/config", "DIST/x.js", ".runforge-build-1/index.html"]


@pytest.mark.parametrize("path", MANAGED)
def test_tools_never_write_or_delete_what_runforge_manages(tmp_path: Path, path: str) -> None:
    """Build output and dependencies are Runforge's: a page written into dist/ would be served
    as the build and outlive a rollback (checkpoints never hold these paths)."""
    gate = StopGate()
    with pytest.raises(WorkspaceError, match="managed by Runforge"):
        fs.write_text_atomic(tmp_path, path, "<h1>not from a build</h1>", gate)
    target = tmp_path / path
    target.parent.mkdir(parents=True)
    target.write_text("built")
    with pytest.raises(WorkspaceError, match="managed by Runforge"):
        fs.delete_file(tmp_path, path, gate)
    with pytest.raises(WorkspaceError, match="managed by Runforge"):
        fs.modify_text_atomic(tmp_path, path, "built", "changed", gate)
    assert target.read_text() == "built"
    assert fs.read_text(tmp_path, path) == "built"  # reading stays allowed
