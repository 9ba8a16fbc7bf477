"""Per-run diffs: what a checkpoint changed against the one before it (git's own diff, real repositories)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from app.checkpoints import CheckpointError, Checkpoints
from app.checkpoints.diff import diff_checkpoint
from tests.support import collect, gen_url, open_stream

APP = "app-1"


@pytest.fixture
def store(tmp_path: Path) -> Checkpoints:
    return Checkpoints(tmp_path / "checkpoints")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    return workspace


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def by_path(diff: Any) -> dict[str, Any]:
    return {f.path: f for f in diff.files}


def test_a_runs_diff_names_each_file_with_its_counts_and_text(store: Checkpoints, ws: Path) -> None:
    write(ws, {"index.html": "<h1>one</h1>\n<p>a</p>\n", "old.css": "a {}\n", "logo.png": b"\x89PNG\0\1\2"})
    store.base(APP, ws, "r1")
    first = store.commit_run(APP, ws, "r1")
    write(
        ws, {"index.html": "<h1>two</h1>\n<p>a</p>\n", "new dir/app.js": "console.log(1)\n", "logo.png": b"\x89PNG\0\3"}
    )
    (ws / "old.css").unlink()
    second = store.commit_run(APP, ws, "r2")

    diff = store.diff(APP, second.sha)
    assert diff.parent == first.sha
    files = by_path(diff)
    assert {path: f.status for path, f in files.items()} == {
        "index.html": "modified",
        "new dir/app.js": "added",
        "old.css": "deleted",
        "logo.png": "modified",
    }
    assert (files["index.html"].added, files["index.html"].removed) == (1, 1)
    assert "-<h1>one</h1>\n+<h1>two</h1>\n" in files["index.html"].diff
    assert files["index.html"].diff.startswith("diff --git a/index.html b/index.html\n")
    assert (files["new dir/app.js"].added, files["new dir/app.js"].removed) == (1, 0)
    assert (files["old.css"].added, files["old.css"].removed) == (0, 1)
    png = files["logo.png"]
    assert (png.binary, png.added, png.diff, png.truncated) == (True, None, None, False)  # named, not dumped
    assert not diff.truncated


def test_the_first_checkpoint_is_compared_with_an_empty_workspace(store: Checkpoints, ws: Path) -> None:
    write(ws, {"a.txt": "x\ny\n"})
    store.base(APP, ws, "r1")
    (baseline,) = store.list(APP)
    diff = store.diff(APP, baseline.sha)
    assert diff.parent is None
    assert [(f.path, f.status, f.added) for f in diff.files] == [("a.txt", "added", 2)]


def test_the_text_is_capped_and_says_so(store: Checkpoints, ws: Path) -> None:
    store.base(APP, ws, "r1")
    write(ws, {"a.txt": "small\n", "b.txt": "".join(f"line {i}\n" for i in range(5000))})
    run = store.commit_run(APP, ws, "r1")
    diff = diff_checkpoint(lambda *args: store_git(store, *args), run.sha, max_bytes=2000)
    files = by_path(diff)
    assert files["a.txt"].diff is not None
    assert not files["a.txt"].truncated
    assert (files["b.txt"].diff, files["b.txt"].truncated, files["b.txt"].added) == (None, True, 5000)
    assert diff.truncated


def store_git(store: Checkpoints, *args: str) -> bytes:
    """git in the test app's repository, as Checkpoints runs it."""
    git = store._open(store._root / f"{APP}.git", None, create=False)
    return git.out(*args)


def test_an_unknown_or_malformed_checkpoint_is_refused(store: Checkpoints, ws: Path) -> None:
    write(ws, {"a.txt": "x\n"})
    store.base(APP, ws, "r1")
    with pytest.raises(CheckpointError):
        store.diff(APP, "0" * 40)
    with pytest.raises(CheckpointError):
        store.diff(APP, "HEAD")
    with pytest.raises(CheckpointError):
        store.diff("app-without-checkpoints", "0" * 40)


# -- the endpoint ----------------------------------------------------------------------------


async def test_the_endpoint_shows_what_a_run_changed_to_its_owner_only(
    client: httpx.AsyncClient, other_client: httpx.AsyncClient
) -> None:
    app_id = (await client.post("/apps", json={"name": "diff", "codeGenType": "multi_file"})).json()["id"]
    async with open_stream(client, "GET", gen_url(app_id, "a counter [sim:page]", runId="r-diff")) as (_, events):
        assert (await collect(events))[-1].event == "done"
    (run,) = [c for c in (await client.get(f"/apps/{app_id}/checkpoints")).json() if c["kind"] == "run"]

    response = await client.get(f"/apps/{app_id}/checkpoints/{run['sha']}/diff")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["sha"] == run["sha"]
    assert {f["path"]: f["status"] for f in body["files"]} == {
        "index.html": "added",
        "style.css": "added",
        "script.js": "added",
    }
    page = next(f for f in body["files"] if f["path"] == "index.html")
    assert (page["removed"], page["binary"]) == (0, False)
    assert page["added"] > 5
    assert "Click Counter</h1>" in page["diff"]

    other = await other_client.get(f"/apps/{app_id}/checkpoints/{run['sha']}/diff")
    assert other.status_code == 403, other.text
    bad = await client.get(f"/apps/{app_id}/checkpoints/HEAD~1/diff")
    assert (bad.status_code, bad.json()["error"]) == (400, "invalid_checkpoint")
    missing = await client.get(f"/apps/{app_id}/checkpoints/{'0' * 40}/diff")
    assert (missing.status_code, missing.json()["error"]) == (404, "checkpoint_not_found")
