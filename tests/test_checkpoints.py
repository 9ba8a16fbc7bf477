"""Workspace checkpoints against real git, in temp dirs: taking, listing, restoring, reverting, and
what a hostile workspace cannot do to them."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
from datetime import UTC
from pathlib import Path

import pytest

from app.checkpoints import Checkpoint, CheckpointError, Checkpoints

APP = "app-1"
Tree = dict[str, bytes | str]  # relative path -> file bytes, or "-> target" for a symlink


@pytest.fixture
def store(tmp_path: Path) -> Checkpoints:
    return Checkpoints(tmp_path / "data" / "checkpoints")


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "data" / "workspaces" / APP


def write(root: Path, files: dict[str, str | bytes]) -> None:
    for rel, content in files.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)


def state(root: Path) -> Tree:
    """Everything under ``root`` (ignored directories included), symlinks not followed."""
    found: Tree = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]:
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            found[rel] = f"-> {os.readlink(path)}" if path.is_symlink() else path.read_bytes()
    return found


def git_dir(store_root: Path, app_id: str = APP) -> Path:
    return store_root / f"{app_id}.git"


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
    return subprocess.run(
        ["git", f"--git-dir={repo}", *args], capture_output=True, check=True, env=env, text=True
    ).stdout.strip()


def committed_paths(repo: Path, sha: str) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", sha).splitlines()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return git_dir(tmp_path / "data" / "checkpoints")


# --- base ------------------------------------------------------------------------------------


def test_base_of_a_new_app_runs_no_git_and_its_first_run_commit_writes_the_empty_baseline(
    store: Checkpoints, ws: Path, repo: Path
) -> None:
    assert store.base(APP, ws, "r1") is None
    assert not repo.exists()  # no repository, no git process: nothing to keep yet
    assert store.list(APP) == []
    write(ws, {"index.html": "<h1>r1</h1>"})
    run = store.commit_run(APP, ws, "r1")
    listed = store.list(APP)
    assert [(c.kind, c.run_id, c.files, c.summary) for c in listed] == [
        ("run", "r1", 1, "run r1"),
        ("baseline", "r1", 0, "baseline before run r1"),
    ]
    assert listed[0].sha == run.sha == git(repo, "rev-parse", "HEAD")
    assert git(repo, "rev-parse", f"{run.sha}^") == listed[1].sha


def test_base_on_an_empty_existing_workspace_is_the_empty_baseline_too(store: Checkpoints, ws: Path) -> None:
    ws.mkdir(parents=True)
    (ws / "node_modules").mkdir()  # never part of a checkpoint
    (ws / "node_modules" / "dep.js").write_text("x")
    assert store.base(APP, ws, "r1") is None


def test_a_rollback_to_the_empty_baseline_empties_the_workspace_but_ignored_paths(store: Checkpoints, ws: Path) -> None:
    assert store.base(APP, ws, "r1") is None
    write(ws, {"index.html": "half", "src/App.vue": "x", "node_modules/dep.js": "kept"})
    store.restore(APP, ws, None)  # the stop in "rollback" mode of a first run
    assert state(ws) == {"node_modules/dep.js": b"kept"}
    assert store.list(APP) == []  # a rollback commits nothing
    sha = store.base(APP, ws, "r2")  # the repository exists now: an ordinary baseline
    assert [(c.sha, c.kind, c.files) for c in store.list(APP)] == [(sha, "baseline", 0)]


def test_base_commits_dirty_state_once_then_returns_head(store: Checkpoints, ws: Path) -> None:
    write(ws, {"index.html": "<h1>template</h1>", "src/main.js": "x"})
    first = store.base(APP, ws, "r1")
    assert store.base(APP, ws, "r2") == first  # clean: no duplicate baseline
    assert len(store.list(APP)) == 1
    write(ws, {"left-by-interrupted-run.txt": "half"})
    second = store.base(APP, ws, "r3")
    assert second != first
    assert [(c.kind, c.run_id, c.files) for c in store.list(APP)] == [("baseline", "r3", 3), ("baseline", "r1", 2)]


def test_base_after_a_run_returns_the_run_checkpoint(store: Checkpoints, ws: Path) -> None:
    store.base(APP, ws, "r1")
    write(ws, {"a.txt": "a"})
    run = store.commit_run(APP, ws, "r1")
    assert store.base(APP, ws, "r2") == run.sha


# --- commit_run, list, find_run ---------------------------------------------------------------


def test_commit_run_commits_even_when_nothing_changed(store: Checkpoints, ws: Path, repo: Path) -> None:
    write(ws, {"a.txt": "a"})
    store.base(APP, ws, "r1")
    one = store.commit_run(APP, ws, "r1")
    two = store.commit_run(APP, ws, "r2")
    assert one.sha != two.sha
    assert git(repo, "rev-parse", f"{one.sha}^{{tree}}") == git(repo, "rev-parse", f"{two.sha}^{{tree}}")
    assert (two.kind, two.run_id, two.summary, two.files) == ("run", "r2", "run r2", 1)


def test_list_is_newest_first_with_kinds_run_ids_and_file_counts(store: Checkpoints, ws: Path) -> None:
    assert store.base(APP, ws, "r1") is None  # a new app: its baseline is written with r1's commit
    write(ws, {"a.txt": "a", "src/b.js": "b"})
    r1 = store.commit_run(APP, ws, "r1")
    assert store.base(APP, ws, "r2") == r1.sha  # clean after r1's commit: no baseline
    write(ws, {"c.txt": "c"})
    r2 = store.commit_run(APP, ws, "r2")
    revert = store.revert_to_run(APP, ws, "r1")
    listed = store.list(APP)
    assert [(c.kind, c.run_id, c.files) for c in listed] == [
        ("revert", "r1", 2),
        ("run", "r2", 3),
        ("run", "r1", 2),
        ("baseline", "r1", 0),
    ]
    assert [c.sha for c in listed[:3]] == [revert.sha, r2.sha, r1.sha]
    assert [c.summary for c in listed] == ["revert to run r1", "run r2", "run r1", "baseline before run r1"]
    assert all(c.created_at.tzinfo is UTC for c in listed)
    assert listed[1] == r2  # what commit_run returned is what list reports


def test_list_and_find_run_of_an_app_without_checkpoints(store: Checkpoints) -> None:
    assert store.list("never-ran") == []
    assert store.find_run("never-ran", "r1") is None


def test_find_run_returns_the_run_checkpoint_only(store: Checkpoints, ws: Path) -> None:
    store.base(APP, ws, "r1")  # a baseline carries the same run id
    write(ws, {"a.txt": "a"})
    r1 = store.commit_run(APP, ws, "r1")
    store.revert_to_run(APP, ws, "r1")  # so does the revert
    assert store.find_run(APP, "r1") == r1
    assert store.find_run(APP, "r2") is None
    assert store.find_run(APP, "r") is None  # a prefix is not a match


def test_run_ids_with_every_allowed_character(store: Checkpoints, ws: Path) -> None:
    run_id = "Run_01.2:3-" + "x" * 117
    assert len(run_id) == 128
    checkpoint = store.commit_run(APP, ws, run_id)
    assert store.find_run(APP, run_id) == checkpoint
    assert checkpoint.summary == f"run {run_id}"


# --- restore ---------------------------------------------------------------------------------


def test_restore_makes_the_workspace_equal_to_the_checkpoint(store: Checkpoints, ws: Path, repo: Path) -> None:
    kept = {"node_modules/pkg/index.js": "dep", "dist/app.js": "built", ".runforge-build-1/out": "tmp"}
    write(ws, {"keep.txt": "same", "modified.txt": "before", "deleted.txt": "here", "src/a/b.js": "b", **kept})
    target = store.commit_run(APP, ws, "r1")
    assert sorted(committed_paths(repo, target.sha)) == ["deleted.txt", "keep.txt", "modified.txt", "src/a/b.js"]
    expected = state(ws)

    write(ws, {"modified.txt": "after", "new.txt": "new", "deep/er/new.js": "n", "src/a/c.js": "c"})
    (ws / "deleted.txt").unlink()
    (ws / "empty" / "dir").mkdir(parents=True)
    write(ws, {"node_modules/pkg/new.js": "installed later", "dist/new.js": "rebuilt"})
    expected |= {"node_modules/pkg/new.js": b"installed later", "dist/new.js": b"rebuilt"}

    listed = store.list(APP)
    store.restore(APP, ws, target.sha)
    assert state(ws) == expected
    assert not (ws / "deep").exists()
    assert not (ws / "empty").exists()
    assert git(repo, "rev-parse", "HEAD") == target.sha  # HEAD did not move
    assert store.list(APP) == listed  # and nothing was committed


def test_restore_swaps_files_and_directories(store: Checkpoints, ws: Path) -> None:
    write(ws, {"a": "file", "b/inner.txt": "dir"})
    target = store.commit_run(APP, ws, "r1")
    (ws / "a").unlink()
    write(ws, {"a/now-a-dir.txt": "x"})
    (ws / "b" / "inner.txt").unlink()
    (ws / "b").rmdir()
    write(ws, {"b": "now a file"})
    store.restore(APP, ws, target.sha)
    assert state(ws) == {"a": b"file", "b/inner.txt": b"dir"}


def test_restore_keeps_symlinks_as_links(store: Checkpoints, ws: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside.txt"
    outside.write_text("secret")
    write(ws, {"real.txt": "r"})
    (ws / "link").symlink_to("real.txt")
    (ws / "escape").symlink_to(outside)
    target = store.commit_run(APP, ws, "r1")
    (ws / "link").unlink()
    (ws / "escape").unlink()
    store.restore(APP, ws, target.sha)
    assert os.readlink(ws / "link") == "real.txt"
    assert os.readlink(ws / "escape") == str(outside)
    assert outside.read_text() == "secret"


def test_restore_of_an_unknown_sha_or_app(store: Checkpoints, ws: Path) -> None:
    store.commit_run(APP, ws, "r1")
    with pytest.raises(CheckpointError, match="unknown checkpoint"):
        store.restore(APP, ws, "0" * 40)
    elsewhere = ws.parent / "other"
    with pytest.raises(CheckpointError, match="no checkpoints"):
        store.restore("other", elsewhere, "0" * 40)
    assert not elsewhere.exists()  # a refused restore creates nothing


def test_rollback_restores_the_base_state(store: Checkpoints, ws: Path) -> None:
    write(ws, {"index.html": "<h1>v1</h1>", "src/App.vue": "<template/>", "style.css": "a{}"})
    base = store.base(APP, ws, "r1")
    before = state(ws)
    write(ws, {"index.html": "<h1>half-written</h1>", "src/components/New.vue": "x"})
    (ws / "style.css").unlink()
    store.restore(APP, ws, base)  # the stop in "rollback" mode
    assert state(ws) == before
    assert store.base(APP, ws, "r2") == base  # the next run starts from the same checkpoint


# --- revert ----------------------------------------------------------------------------------


def test_revert_to_run_is_a_checkpoint_and_can_be_reverted(store: Checkpoints, ws: Path) -> None:
    store.base(APP, ws, "r1")
    write(ws, {"page.html": "one", "only-in-one.txt": "1"})
    store.commit_run(APP, ws, "r1")
    after_one = state(ws)
    write(ws, {"page.html": "two", "only-in-two.txt": "2"})
    (ws / "only-in-one.txt").unlink()
    store.commit_run(APP, ws, "r2")
    after_two = state(ws)

    back = store.revert_to_run(APP, ws, "r1")
    assert (back.kind, back.run_id, back.summary, back.files) == ("revert", "r1", "revert to run r1", 2)
    assert state(ws) == after_one
    store.revert_to_run(APP, ws, "r2")
    assert state(ws) == after_two
    assert [c.kind for c in store.list(APP)] == ["revert", "revert", "run", "run", "baseline"]


def test_revert_to_an_unknown_run(store: Checkpoints, ws: Path) -> None:
    write(ws, {"a.txt": "a"})
    store.base(APP, ws, "r1")  # a baseline is not a run checkpoint
    with pytest.raises(CheckpointError, match="r1 has no checkpoint"):
        store.revert_to_run(APP, ws, "r1")
    with pytest.raises(CheckpointError):
        store.revert_to_run("other", ws, "r1")


# --- names and contents ----------------------------------------------------------------------

ODD_NAMES = [
    "with space.txt",
    "ünïcödé/日本語.md",
    "-rf.txt",
    "--help",
    "-",
    "line\nbreak.txt",
    "tab\there",
    '"quoted"',
    "back\\slash",
    "star*?[x].txt",
    ":(exclude)magic",
    "git~1/x",
    ".git. /y",
    ".gitignore-not",
]


def test_odd_file_names_round_trip(store: Checkpoints, ws: Path, repo: Path) -> None:
    files: dict[str, str | bytes] = {name: f"content of {name!r}" for name in ODD_NAMES}
    write(ws, files)
    latin1 = os.fsencode(ws) + b"/caf\xe9.txt"  # not UTF-8
    with open(latin1, "wb") as handle:
        handle.write(b"bytes")
    expected = state(ws)
    checkpoint = store.commit_run(APP, ws, "r1")
    assert checkpoint.files == len(ODD_NAMES) + 1
    for name in ODD_NAMES:
        (ws / name).unlink()
    os.unlink(latin1)
    store.restore(APP, ws, checkpoint.sha)
    assert state(ws) == expected


def test_contents_are_stored_byte_for_byte(store: Checkpoints, ws: Path) -> None:
    """A model-written .gitattributes must not make git convert line endings, expand $Id$ or
    re-encode: a checkpoint is the bytes that were on disk."""
    attributes = "* text eol=crlf ident\n*.txt working-tree-encoding=UTF-16\n"
    files: dict[str, str | bytes] = {".gitattributes": attributes, "lf.txt": b"a\nb\n", "id.js": b"$Id$\r\n\xff"}
    write(ws, files)
    checkpoint = store.commit_run(APP, ws, "r1")
    for name in files:
        (ws / name).unlink()
    store.restore(APP, ws, checkpoint.sha)
    assert state(ws) == {
        name: content.encode() if isinstance(content, str) else content for name, content in files.items()
    }


def test_the_workspace_gitignore_does_not_shrink_checkpoints(store: Checkpoints, ws: Path, repo: Path) -> None:
    write(ws, {".gitignore": "*\n", "src/App.vue": "x", ".env.local": "KEY=1"})
    checkpoint = store.commit_run(APP, ws, "r1")
    assert sorted(committed_paths(repo, checkpoint.sha)) == [".env.local", ".gitignore", "src/App.vue"]
    write(ws, {"new.txt": "ignored by the workspace's own .gitignore, removed anyway"})
    store.restore(APP, ws, checkpoint.sha)
    assert not (ws / "new.txt").exists()


def test_executable_bit_is_kept(store: Checkpoints, ws: Path) -> None:
    write(ws, {"run.sh": "#!/bin/sh\n"})
    (ws / "run.sh").chmod(0o755)
    checkpoint = store.commit_run(APP, ws, "r1")
    (ws / "run.sh").unlink()
    store.restore(APP, ws, checkpoint.sha)
    assert (ws / "run.sh").stat().st_mode & stat.S_IXUSR


# --- a hostile workspace ---------------------------------------------------------------------


def plant_traps(ws: Path, marker: Path) -> None:
    """A workspace .git with hooks and config, filter drivers, and a fake nested repository."""
    script = f"#!/bin/sh\ntouch {marker}\ncat\n"
    for hook in ("pre-commit", "post-commit", "post-checkout", "pre-auto-gc", "reference-transaction"):
        write(ws, {f".git/hooks/{hook}": script})
        (ws / ".git" / "hooks" / hook).chmod(0o755)
    write(ws, {"evil.sh": script})
    (ws / "evil.sh").chmod(0o755)
    config = (
        f"[core]\n\thooksPath = hooks\n\tfsmonitor = {ws / 'evil.sh'}\n"
        f'[filter "evil"]\n\tclean = {ws / "evil.sh"}\n\tsmudge = {ws / "evil.sh"}\n\trequired = true\n'
    )
    write(ws, {".git/config": config, ".git/HEAD": "ref: refs/heads/main\n", ".gitattributes": "* filter=evil\n"})
    (ws / ".git" / "objects").mkdir()
    (ws / ".git" / "refs").mkdir()
    # Looks like a repository without a commit: `git add -A` would abort on it.
    write(ws, {"sub/.git/HEAD": "ref: refs/heads/main\n", "sub/.git/config": config, "sub/f.txt": "inside"})
    (ws / "sub" / ".git" / "objects").mkdir()
    (ws / "sub" / ".git" / "refs").mkdir()
    write(ws, {".GIT/x": "upper-case .git", "lib/.Git": "a file named .Git"})


def test_a_hostile_workspace_runs_nothing_and_its_git_is_not_committed(
    store: Checkpoints, ws: Path, repo: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    plant_traps(ws, marker)
    store.base(APP, ws, "r1")
    write(ws, {"page.html": "x"})
    checkpoint = store.commit_run(APP, ws, "r1")
    paths = committed_paths(repo, checkpoint.sha)
    assert sorted(paths) == [".gitattributes", "evil.sh", "page.html", "sub/f.txt"]
    git_files = {rel: content for rel, content in state(ws).items() if ".git" in rel.lower()}

    write(ws, {"page.html": "changed", "sub/new.txt": "n"})
    store.restore(APP, ws, checkpoint.sha)
    store.revert_to_run(APP, ws, "r1")
    store.list(APP)
    assert not marker.exists()
    assert (ws / "page.html").read_text() == "x"
    assert not (ws / "sub" / "new.txt").exists()
    # Every .git (any case, any depth) is ignored: never committed, never removed.
    assert {rel: content for rel, content in state(ws).items() if ".git" in rel.lower()} == git_files


def test_hooks_in_the_checkpoint_repository_do_not_run(
    store: Checkpoints, ws: Path, repo: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "pwned"
    write(ws, {"seed.txt": "a repository to plant hooks in"})
    store.base(APP, ws, "r1")
    for hook in ("post-commit", "reference-transaction", "post-checkout", "pre-auto-gc"):
        write(repo, {f"hooks/{hook}": f"#!/bin/sh\ntouch {marker}\n"})
        (repo / "hooks" / hook).chmod(0o755)
    write(ws, {"a.txt": "a"})
    checkpoint = store.commit_run(APP, ws, "r1")
    store.restore(APP, ws, checkpoint.sha)
    assert not marker.exists()


def test_user_and_environment_git_settings_are_ignored(
    store: Checkpoints, ws: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home, marker = tmp_path / "home", tmp_path / "pwned"
    write(home, {"evil.sh": f"#!/bin/sh\ntouch {marker}\n", ".config/git/ignore": "*\n"})
    (home / "evil.sh").chmod(0o755)
    write(home, {".gitconfig": f"[core]\n\tfsmonitor = {home / 'evil.sh'}\n\thooksPath = {home}\n"})
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "elsewhere"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(tmp_path / "elsewhere-index"))
    write(ws, {"a.txt": "a"})
    checkpoint = store.commit_run(APP, ws, "r1")
    assert checkpoint.files == 1
    write(ws, {"new.txt": "ignored by ~/.config/git/ignore, removed anyway"})
    (ws / "new-dir" / "empty").mkdir(parents=True)  # only `git clean` removes this one
    store.restore(APP, ws, checkpoint.sha)
    assert sorted(os.listdir(ws)) == ["a.txt"]
    assert not marker.exists()
    assert not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "elsewhere-index").exists()


# --- validation, deletion, locking -----------------------------------------------------------

BAD_APP_IDS = ["", "../x", "..", "a/b", "a b", "a.git", "x" * 65, "abc\n", "é", "/abs"]
BAD_RUN_IDS = ["", "a/b", "a b", "x" * 129, "r1\n", "é", "r1;rm"]


@pytest.mark.parametrize("app_id", BAD_APP_IDS)
def test_invalid_app_ids_are_refused(store: Checkpoints, ws: Path, app_id: str) -> None:
    for call in (
        lambda: store.base(app_id, ws, "r1"),
        lambda: store.commit_run(app_id, ws, "r1"),
        lambda: store.list(app_id),
        lambda: store.find_run(app_id, "r1"),
        lambda: store.restore(app_id, ws, "0" * 40),
        lambda: store.revert_to_run(app_id, ws, "r1"),
        lambda: store.delete(app_id),
    ):
        with pytest.raises(CheckpointError, match="invalid app id"):
            call()


@pytest.mark.parametrize("run_id", BAD_RUN_IDS)
def test_invalid_run_ids_are_refused(store: Checkpoints, ws: Path, run_id: str) -> None:
    for call in (
        lambda: store.base(APP, ws, run_id),
        lambda: store.commit_run(APP, ws, run_id),
        lambda: store.find_run(APP, run_id),
        lambda: store.revert_to_run(APP, ws, run_id),
    ):
        with pytest.raises(CheckpointError, match="invalid run id"):
            call()
    assert not ws.exists()  # refused before touching anything


@pytest.mark.parametrize("sha", ["HEAD", "--help", "0" * 39, "G" * 40, "main", "HEAD~1"])
def test_invalid_shas_are_refused(store: Checkpoints, ws: Path, sha: str) -> None:
    store.commit_run(APP, ws, "r1")
    with pytest.raises(CheckpointError, match="invalid checkpoint sha"):
        store.restore(APP, ws, sha)


def test_a_workspace_overlapping_the_repository_is_refused(store: Checkpoints, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="overlap"):
        store.base(APP, tmp_path / "data", "r1")


def test_a_foreign_directory_at_the_repository_path_is_left_alone(store: Checkpoints, ws: Path, repo: Path) -> None:
    write(repo, {"notes.txt": "not a repository"})
    with pytest.raises(CheckpointError, match="not a repository"):
        store.base(APP, ws, "r1")
    assert (repo / "notes.txt").read_text() == "not a repository"


def test_filesystem_failures_are_checkpoint_errors(store: Checkpoints, tmp_path: Path) -> None:
    write(tmp_path, {"a-file": "the workspace path is a file"})
    with pytest.raises(CheckpointError, match="checkpoint storage failed"):
        store.base(APP, tmp_path / "a-file", "r1")


def test_delete_removes_the_repository(store: Checkpoints, ws: Path, repo: Path) -> None:
    store.commit_run(APP, ws, "r1")
    store.delete(APP)
    assert not repo.exists()
    assert store.list(APP) == []
    store.delete(APP)  # deleting twice is fine
    assert store.commit_run(APP, ws, "r2").run_id == "r2"  # and the app can start over


def test_a_stale_index_lock_is_cleared(store: Checkpoints, ws: Path, repo: Path) -> None:
    store.commit_run(APP, ws, "r1")
    (repo / "index.lock").write_text("left by a killed git")
    write(ws, {"a.txt": "a"})
    assert store.commit_run(APP, ws, "r2").files == 1


def test_concurrent_calls_on_one_app_are_serialised(store: Checkpoints, ws: Path) -> None:
    store.base(APP, ws, "r0")
    errors: list[BaseException] = []

    def commit(index: int) -> None:
        try:
            write(ws, {f"f{index}.txt": str(index)})
            store.commit_run(APP, ws, f"r{index}")
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=commit, args=(index,)) for index in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    runs = [c for c in store.list(APP) if c.kind == "run"]
    assert sorted(c.run_id for c in runs) == sorted(f"r{index}" for index in range(1, 9))
    assert runs[0].files == 8


# --- timing (recorded, not asserted) ----------------------------------------------------------


def timed(label: str, call: object) -> None:
    assert callable(call)
    started = time.perf_counter()
    call()
    print(f"checkpoint timing: {label}: {(time.perf_counter() - started) * 1000:.1f} ms")


def test_timings_on_a_50_file_workspace(store: Checkpoints, ws: Path) -> None:
    write(ws, {f"src/components/C{index}.vue": "<template><div/></template>\n" * 40 for index in range(50)})
    timed("first base (init + 50 files)", lambda: store.base(APP, ws, "r1"))
    timed("base, clean workspace", lambda: store.base(APP, ws, "r1"))
    write(ws, {f"src/components/C{index}.vue": f"changed {index}" for index in range(10)})
    timed("commit_run, 10 of 50 files changed", lambda: store.commit_run(APP, ws, "r1"))
    timed("commit_run, nothing changed", lambda: store.commit_run(APP, ws, "r2"))
    checkpoint: Checkpoint | None = store.find_run(APP, "r1")
    assert checkpoint is not None
    write(ws, {f"new/{index}.txt": "x" for index in range(20)})
    timed("restore (20 new files removed)", lambda: store.restore(APP, ws, checkpoint.sha))
    timed("list (4 checkpoints)", lambda: store.list(APP))
