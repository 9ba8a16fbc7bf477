"""Workspace path confinement and the file operations built on it (real files, no mocks)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from app.control.cancel import RunCancelled, StopGate, StopReason
from app.workspace.fs import (
    CORE_FILES,
    MAX_WRITE_BYTES,
    DirEntry,
    TreeEntry,
    WorkspaceError,
    delete_file,
    is_temp_name,
    list_dir,
    modify_text_atomic,
    read_text,
    tree,
    write_text_atomic,
)
from app.workspace.paths import PathRefused, relative_display, resolve_in_workspace
from tests.workspace_kit import HARDLINK_HOSTILE, HOSTILE, ClosingGate, make_workspace


def snapshot_outside(base: Path) -> dict[str, bytes | None]:
    """Everything under ``base`` except the workspace (dirs map to None), without following links."""
    result: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(base):
        rel_dir = Path(dirpath).relative_to(base)
        if rel_dir.parts[:1] == ("ws",):
            continue
        for name in dirnames:
            result[(rel_dir / name).as_posix()] = None
        for name in filenames:
            result[(rel_dir / name).as_posix()] = (Path(dirpath) / name).read_bytes()
    return result


def temp_files(directory: Path) -> list[str]:
    return [name for name in os.listdir(directory) if name.endswith(".tmp")]


@pytest.mark.parametrize("user_path", HOSTILE)
def test_hostile_paths_are_refused(ws: Path, user_path: str) -> None:
    with pytest.raises(PathRefused):
        resolve_in_workspace(ws, user_path)


@pytest.mark.parametrize(
    ("user_path", "expected"),
    [
        (".", "."),
        ("./", "."),
        ("a", "a"),
        ("a/b/c.txt", "a/b/c.txt"),
        ("./a//b/", "a/b"),
        ("~", "~"),
        ("~/x", "~/x"),
        ("...", "..."),
        (".hidden", ".hidden"),
        ("a b", "a b"),
        ("ünï.txt", "ünï.txt"),
        ("a%20b", "a%20b"),
        ("100%", "100%"),
        ("x" * 255, "x" * 255),
        ("srclink/App.vue", "srclink/App.vue"),
        # Unicode that only looks odd: kept as written (NFKC would not make it a separator or a dot).
        ("ｈｅｌｌｏ.txt", "ｈｅｌｌｏ.txt"),
        ("页面。html", "页面。html"),
        ("wait…", "wait…"),
        ("e\u0301.txt", "e\u0301.txt"),
        ("\U0001f600" * 63, "\U0001f600" * 63),
        ("a%2500b", "a%2500b"),
    ],
)
def test_allowed_paths_resolve_inside(ws: Path, user_path: str, expected: str) -> None:
    resolved = resolve_in_workspace(ws, user_path)
    real_ws = Path(os.path.realpath(ws))
    assert resolved == (real_ws if expected == "." else real_ws / expected)
    assert relative_display(ws, resolved) == expected


def test_refusal_message_is_short_and_names_the_path(ws: Path) -> None:
    with pytest.raises(PathRefused, match=r"^path escapes the workspace: \.\./x$"):
        resolve_in_workspace(ws, "../x")
    with pytest.raises(PathRefused) as info:
        resolve_in_workspace(ws, "a\x00b")
    assert "\x00" not in str(info.value)


def test_resolve_is_pure(ws: Path, tmp_path: Path) -> None:
    before = sorted(p.as_posix() for p in tmp_path.rglob("*"))
    resolve_in_workspace(ws, "new/dir/file.txt")
    assert sorted(p.as_posix() for p in tmp_path.rglob("*")) == before


def test_symlinked_root_still_confines(tmp_path: Path) -> None:
    ws = make_workspace(tmp_path)
    alias = tmp_path / "alias"
    alias.symlink_to(ws)  # a workspace reached through a symlink is fine itself
    assert resolve_in_workspace(alias, "src/App.vue") == Path(os.path.realpath(ws)) / "src/App.vue"
    with pytest.raises(PathRefused):
        resolve_in_workspace(alias, "out_dir/secret.txt")


# --- write_text_atomic -------------------------------------------------------------------------


def test_write_creates_parents_and_counts_bytes(ws: Path, gate: StopGate) -> None:
    assert write_text_atomic(ws, "src/components/Hello.vue", "héllo", gate) == 6
    assert (ws / "src/components/Hello.vue").read_text() == "héllo"
    assert temp_files(ws / "src/components") == []


def test_write_overwrites_and_keeps_mode(ws: Path, gate: StopGate) -> None:
    target = ws / "script.sh"
    target.write_text("old")
    target.chmod(0o750)
    write_text_atomic(ws, "script.sh", "new", gate)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o750


def test_closed_gate_keeps_existing_content(ws: Path, gate: StopGate) -> None:
    gate.close(StopReason.USER_STOP)
    with pytest.raises(RunCancelled):
        write_text_atomic(ws, "index.html", "replaced", gate)
    assert (ws / "index.html").read_text() == "core index.html\n"
    assert temp_files(ws) == []


def test_closed_gate_creates_no_file_and_no_dir(ws: Path, gate: StopGate) -> None:
    gate.close(StopReason.SHUTDOWN)
    with pytest.raises(RunCancelled):
        write_text_atomic(ws, "newdir/file.txt", "x", gate)
    assert not (ws / "newdir").exists()


def test_stop_before_rename_leaves_target_and_no_temp(ws: Path) -> None:
    gate = ClosingGate()
    gate.directory = ws / "src"
    with pytest.raises(RunCancelled):
        write_text_atomic(ws, "src/App.vue", "half-baked", gate)
    # The temp file existed at commit time (so the writer really wrote one) and is gone now.
    new_names = set(gate.seen_at_commit) - set(os.listdir(ws / "src"))
    assert len(new_names) == 1
    assert is_temp_name(new_names.pop())
    assert (ws / "src/App.vue").read_text() == "core src/App.vue\n"
    assert temp_files(ws / "src") == []


def test_stop_before_rename_of_new_file(ws: Path) -> None:
    gate = ClosingGate()
    with pytest.raises(RunCancelled):
        write_text_atomic(ws, "fresh.txt", "data", gate)
    assert not (ws / "fresh.txt").exists()
    assert temp_files(ws) == []


def test_stop_before_mkdir_creates_no_dir(ws: Path) -> None:
    with pytest.raises(RunCancelled):
        write_text_atomic(ws, "newdir/deeper/file.txt", "data", ClosingGate())
    assert not (ws / "newdir").exists()


def test_stop_during_a_write_into_a_new_dir_commits_nothing_and_counts_nothing(ws: Path) -> None:
    """The directory and the rename are one commit: a refused commit leaves no empty dir behind
    and never reports the tool call as executed (the bug the stop benchmark caught)."""
    gate = ClosingGate()
    gate.directory = ws / "src"  # the nearest existing directory: where the temp file is staged
    commits: list[str] = []
    gate.on_commit = lambda: commits.append("committed")
    with pytest.raises(RunCancelled):
        write_text_atomic(ws, "src/new/app.js", "data", gate)
    assert any(name.endswith(".tmp") for name in gate.seen_at_commit)  # staged, then refused
    assert commits == []
    assert not (ws / "src" / "new").exists()
    assert temp_files(ws) == []
    assert temp_files(ws / "src") == []


def test_write_refuses_symlink_target_even_inside(ws: Path, gate: StopGate) -> None:
    (ws / "alias.vue").symlink_to("src/App.vue")
    with pytest.raises(WorkspaceError, match="symlink"):
        write_text_atomic(ws, "alias.vue", "x", gate)
    assert (ws / "alias.vue").is_symlink()
    assert (ws / "src/App.vue").read_text() == "core src/App.vue\n"


@pytest.mark.parametrize("user_path", ["src", ".", "./src/"])
def test_write_refuses_directories(ws: Path, gate: StopGate, user_path: str) -> None:
    with pytest.raises(WorkspaceError, match="is a directory"):
        write_text_atomic(ws, user_path, "x", gate)
    assert (ws / "src").is_dir()


def test_write_through_file_as_parent_is_refused(ws: Path, gate: StopGate) -> None:
    with pytest.raises(WorkspaceError, match="parent path is a file"):
        write_text_atomic(ws, "index.html/inner.txt", "x", gate)
    assert (ws / "index.html").read_text() == "core index.html\n"


def test_write_size_limit_is_in_encoded_bytes(ws: Path, gate: StopGate) -> None:
    assert write_text_atomic(ws, "max.txt", "a" * MAX_WRITE_BYTES, gate) == MAX_WRITE_BYTES
    with pytest.raises(WorkspaceError, match="too large"):
        write_text_atomic(ws, "over.txt", "a" * (MAX_WRITE_BYTES + 1), gate)
    # Fewer characters than the limit, but more bytes once encoded.
    with pytest.raises(WorkspaceError, match="too large"):
        write_text_atomic(ws, "wide.txt", "é" * (MAX_WRITE_BYTES // 2 + 1), gate)
    assert not (ws / "over.txt").exists()
    assert not (ws / "wide.txt").exists()


def test_write_refuses_unencodable_content(ws: Path, gate: StopGate) -> None:
    with pytest.raises(WorkspaceError, match="UTF-8"):
        write_text_atomic(ws, "bad.txt", "a\udcffb", gate)
    assert not (ws / "bad.txt").exists()


def test_write_longest_name(ws: Path, gate: StopGate) -> None:
    # The temp name must stay under the 255-byte limit even for the longest allowed name.
    name = "é" * 127 + "x"
    write_text_atomic(ws, name, "ok", gate)
    assert (ws / name).read_text() == "ok"


# --- read_text ---------------------------------------------------------------------------------


def test_read_text_and_replacement_of_bad_bytes(ws: Path) -> None:
    (ws / "bin.txt").write_bytes(b"ok \xff\xfe end")
    assert read_text(ws, "bin.txt") == "ok \ufffd\ufffd end"
    assert read_text(ws, "srclink/App.vue") == "core src/App.vue\n"


def test_read_text_truncates_with_marker(ws: Path) -> None:
    (ws / "big.txt").write_text("x" * 50)
    text = read_text(ws, "big.txt", limit=10)
    assert text.startswith("x" * 10 + "\n[... truncated")
    assert "first 10 of 50 bytes of big.txt" in text
    assert read_text(ws, "big.txt", limit=50) == "x" * 50


def test_read_truncation_does_not_split_characters(ws: Path) -> None:
    (ws / "wide.txt").write_text("éééé")  # 8 bytes
    assert read_text(ws, "wide.txt", limit=3).startswith("é\n[... truncated")


def test_read_refuses_dirs_missing_and_special_files(ws: Path) -> None:
    with pytest.raises(WorkspaceError, match="src is a directory"):
        read_text(ws, "src")
    with pytest.raises(WorkspaceError, match=r"no such file: nope\.txt"):
        read_text(ws, "nope.txt")
    with pytest.raises(WorkspaceError, match="no such file"):
        read_text(ws, "index.html/child")
    os.mkfifo(ws / "pipe")
    with pytest.raises(WorkspaceError, match="not a regular file"):
        read_text(ws, "pipe")


# --- list_dir ----------------------------------------------------------------------------------


def test_list_dir_sorted_with_kinds_and_sizes(ws: Path) -> None:
    entries = list_dir(ws, ".")
    names = [entry.name for entry in entries]
    assert names == sorted(names)
    by_name = {entry.name: entry for entry in entries}
    assert by_name["index.html"] == DirEntry("index.html", "file", len("core index.html\n"))
    assert by_name["src"] == DirEntry("src", "dir", 0)
    assert by_name["out_dir"] == DirEntry("out_dir", "symlink", 0)
    assert by_name["out_file"] == DirEntry("out_file", "symlink", 0)  # size not taken from outside
    assert "secret.txt" not in names


def test_list_dir_shows_hidden_files(ws: Path) -> None:
    (ws / "src" / ".env").write_text("A=1")
    assert [entry.name for entry in list_dir(ws, "src")] == [".env", "App.vue", "main.js", "main.ts"]


def test_list_dir_caps_entries(ws: Path) -> None:
    many = ws / "many"
    many.mkdir()
    for index in range(1005):
        (many / f"f{index:04d}").touch()
    entries = list_dir(ws, "many")
    assert len(entries) == 1000
    assert entries[0].name == "f0000"
    assert entries[-1].name == "f0999"


def test_list_dir_errors(ws: Path) -> None:
    with pytest.raises(WorkspaceError, match="not a directory"):
        list_dir(ws, "index.html")
    with pytest.raises(WorkspaceError, match="no such directory: missing"):
        list_dir(ws, "missing")


# --- modify_text_atomic ------------------------------------------------------------------------


def test_modify_replaces_single_occurrence(ws: Path, gate: StopGate) -> None:
    (ws / "a.txt").write_text("one two three")
    modify_text_atomic(ws, "a.txt", "two", "2", gate)
    assert (ws / "a.txt").read_text() == "one 2 three"
    assert temp_files(ws) == []


@pytest.mark.parametrize(
    ("content", "old_text", "message"),
    [
        ("one two", "three", "old_text not found in a.txt"),
        ("x x x", "x", "old_text occurs 3 times in a.txt; make it unique"),
        ("aaa", "aa", "old_text occurs 2 times in a.txt; make it unique"),  # overlapping
        ("abc", "", "old_text must not be empty"),
    ],
)
def test_modify_requires_exactly_one(ws: Path, gate: StopGate, content: str, old_text: str, message: str) -> None:
    (ws / "a.txt").write_text(content)
    with pytest.raises(WorkspaceError) as info:
        modify_text_atomic(ws, "a.txt", old_text, "NEW", gate)
    assert str(info.value) == message
    assert (ws / "a.txt").read_text() == content


def test_modify_refuses_invalid_utf8_and_missing(ws: Path, gate: StopGate) -> None:
    (ws / "bin.txt").write_bytes(b"abc \xff")
    with pytest.raises(WorkspaceError, match="not valid UTF-8"):
        modify_text_atomic(ws, "bin.txt", "abc", "x", gate)
    assert (ws / "bin.txt").read_bytes() == b"abc \xff"
    with pytest.raises(WorkspaceError, match="no such file"):
        modify_text_atomic(ws, "missing.txt", "a", "b", gate)


def test_modify_with_closed_gate_keeps_file(ws: Path, gate: StopGate) -> None:
    gate.close(StopReason.USER_STOP)
    with pytest.raises(RunCancelled):
        modify_text_atomic(ws, "index.html", "core", "gone", gate)
    assert (ws / "index.html").read_text() == "core index.html\n"


# --- delete_file -------------------------------------------------------------------------------


def test_delete_file(ws: Path, gate: StopGate) -> None:
    (ws / "src" / "old.js").write_text("x")
    delete_file(ws, "src/old.js", gate)
    assert not (ws / "src" / "old.js").exists()


@pytest.mark.parametrize(
    "user_path",
    [*sorted(CORE_FILES), "./package.json", "src//App.vue", "srclink/main.js", "PACKAGE.JSON"],
)
def test_delete_refuses_core_files(ws: Path, gate: StopGate, user_path: str) -> None:
    with pytest.raises(WorkspaceError, match="core project file"):
        delete_file(ws, user_path, gate)
    for core in CORE_FILES:
        assert (ws / core).is_file()


@pytest.mark.parametrize("user_path", ["src", "sub", "."])
def test_delete_refuses_directories(ws: Path, gate: StopGate, user_path: str) -> None:
    (ws / "empty").mkdir()
    with pytest.raises(WorkspaceError, match="directory"):
        delete_file(ws, user_path, gate)
    with pytest.raises(WorkspaceError, match="directory"):
        delete_file(ws, "empty", gate)
    assert (ws / "empty").is_dir()
    assert (ws / "src").is_dir()


def test_delete_missing_and_closed_gate(ws: Path, gate: StopGate) -> None:
    with pytest.raises(WorkspaceError, match="no such file: nope"):
        delete_file(ws, "nope", gate)
    (ws / "keep.txt").write_text("x")
    gate.close(StopReason.USER_STOP)
    with pytest.raises(RunCancelled):
        delete_file(ws, "keep.txt", gate)
    assert (ws / "keep.txt").exists()


def test_delete_inside_symlink_removes_only_the_link(ws: Path, gate: StopGate) -> None:
    (ws / "note.txt").write_text("keep")
    (ws / "note_link").symlink_to("note.txt")
    delete_file(ws, "note_link", gate)
    assert not (ws / "note_link").is_symlink()
    assert (ws / "note.txt").read_text() == "keep"


@pytest.mark.parametrize("user_path", HOSTILE)
def test_fs_functions_refuse_hostile_paths(tmp_path: Path, user_path: str) -> None:
    ws = make_workspace(tmp_path)
    gate = StopGate()
    before = snapshot_outside(tmp_path)
    calls: list[Callable[[], object]] = [
        lambda: read_text(ws, user_path),
        lambda: list_dir(ws, user_path),
        lambda: write_text_atomic(ws, user_path, "pwned", gate),
        lambda: modify_text_atomic(ws, user_path, "secret", "pwned", gate),
        lambda: delete_file(ws, user_path, gate),
    ]
    for call in calls:
        with pytest.raises(PathRefused):
            call()
    assert snapshot_outside(tmp_path) == before
    assert os.listdir(tmp_path / "sibling") == []


def test_corpus_covers_every_category() -> None:
    from tests.workspace_kit import CATEGORIES

    assert len(HOSTILE) >= 50
    assert len(set(HOSTILE)) == len(HOSTILE)
    assert all(CATEGORIES.values())
    assert sum(len(cases) for cases in CATEGORIES.values()) == len(HOSTILE)


@pytest.mark.parametrize("user_path", HARDLINK_HOSTILE)
def test_hard_links_to_outside_are_refused_and_the_outside_file_is_untouched(tmp_path: Path, user_path: str) -> None:
    ws = make_workspace(tmp_path)
    secret = tmp_path / "outside" / "secret.txt"
    links = os.stat(secret).st_nlink
    gate = StopGate()
    for call in (
        lambda: read_text(ws, user_path),
        lambda: write_text_atomic(ws, user_path, "pwned", gate),
        lambda: modify_text_atomic(ws, user_path, "secret", "pwned", gate),
        lambda: delete_file(ws, user_path, gate),
    ):
        with pytest.raises(PathRefused, match="hard-linked") as info:
            call()
        assert "top secret" not in str(info.value)
    assert secret.read_text() == "top secret"
    assert os.stat(secret).st_nlink == links


def test_a_hard_link_between_two_workspace_files_is_refused_too(ws: Path, gate: StopGate) -> None:
    """The inode cannot say where its other name is: both names are refused, nothing is lost."""
    (ws / "a.txt").write_text("shared")
    os.link(ws / "a.txt", ws / "b.txt")
    for name in ("a.txt", "b.txt"):
        with pytest.raises(PathRefused, match="hard-linked"):
            read_text(ws, name)
    assert (ws / "a.txt").read_text() == "shared"


def test_runforge_own_writes_never_leave_a_hard_link(ws: Path, gate: StopGate) -> None:
    write_text_atomic(ws, "new/file.txt", "one two", gate)
    modify_text_atomic(ws, "new/file.txt", "two", "three", gate)
    assert os.stat(ws / "new/file.txt").st_nlink == 1
    assert read_text(ws, "new/file.txt") == "one three"


# --- tree --------------------------------------------------------------------------------------


def test_tree_skips_build_dirs_temp_files_and_symlink_targets(ws: Path) -> None:
    for skipped in ["node_modules/vue/index.js", ".git/HEAD", "dist/app.js", "src/dist/x.js"]:
        (ws / skipped).parent.mkdir(parents=True, exist_ok=True)
        (ws / skipped).write_text("x")
    (ws / "src" / ".App.vue.0123456789abcdef.tmp").write_text("partial")
    (ws / "src" / ".App.vue.tmp").write_text("not ours")  # does not match the writer's pattern
    paths = [entry.path for entry in tree(ws)]
    assert paths == [
        "dangling",
        "hardlink_out",
        "index.html",
        "out_dir",
        "out_file",
        "package.json",
        "src",
        "src/.App.vue.tmp",
        "src/App.vue",
        "src/main.js",
        "src/main.ts",
        "srclink",
        "sub",
        "sub/esc",
        "sub/hardlink_out",
        "up",
        "vite.config.js",
        "vite.config.ts",
    ]
    kinds = {entry.path: entry.kind for entry in tree(ws)}
    assert kinds["out_dir"] == kinds["srclink"] == kinds["up"] == "symlink"
    assert TreeEntry("src/App.vue", "file", len("core src/App.vue\n")) in tree(ws)


def test_tree_max_entries(ws: Path) -> None:
    assert [entry.path for entry in tree(ws, max_entries=3)] == ["dangling", "hardlink_out", "index.html"]


def test_names_that_are_not_utf8_are_listed_printably(ws: Path) -> None:
    """A name the OS gives as bytes must not break JSON answers or the model's next request."""
    raw = os.path.join(os.fsencode(ws), b"caf\xe9.txt")
    with open(raw, "wb") as handle:
        handle.write(b"x")
    listed = [entry.name for entry in list_dir(ws, ".")]
    walked = [entry.path for entry in tree(ws)]
    assert "caf\ufffd.txt" in listed
    assert "caf\ufffd.txt" in walked
    for name in listed + walked:
        name.encode("utf-8")  # raises for a lone surrogate
