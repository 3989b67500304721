"""The git ratchet, in throwaway repositories: commits never touch the user's checkout."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from autoresearch.errors import GitError
from autoresearch.ratchet import Ratchet


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false", *args],
        cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def make_repo(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", "-A")
    git(path, "commit", "-q", "-m", "base")
    return path


def checkout_state(repo: Path) -> tuple[str, str, str]:
    return (git(repo, "status", "--porcelain", "--untracked-files=all"), git(repo, "rev-parse", "HEAD"),
            git(repo, "symbolic-ref", "HEAD"))


@pytest.fixture
def repo(tmp_path):
    r = make_repo(tmp_path / "repo", {"train.py": "LR = 0.1\nSTEPS = 10\n", "prepare.py": "X = 1\n"})
    # a dirty checkout: the user's uncommitted work must survive every ratchet call
    (r / "train.py").write_text("LR = 0.5  # user's uncommitted edit\nSTEPS = 10\n")
    (r / "notes.txt").write_text("untracked\n")
    return r


def test_make_commit_with_files_leaves_the_checkout_alone(repo):
    before = checkout_state(repo)
    rat = Ratchet(repo)
    base = rat.head()
    cr = rat.make_commit(base, "try lr", files={"train.py": "LR = 0.2\nSTEPS = 10\n",
                                                "new.py": "Y = 2\n"})
    assert checkout_state(repo) == before
    assert rat.read_files(cr.sha, ["train.py", "new.py"]) == {
        "train.py": "LR = 0.2\nSTEPS = 10\n", "new.py": "Y = 2\n"}
    assert sorted(cr.changed) == ["new.py", "train.py"]
    assert rat.parent_of(cr.sha) == base
    assert rat.tree_of(cr.sha) == cr.tree
    assert git(repo, "log", "-1", "--format=%s", cr.sha) == "try lr"


def test_make_commit_deletes_a_file(repo):
    before = checkout_state(repo)
    rat = Ratchet(repo)
    cr = rat.make_commit(rat.head(), "drop prepare", files={"prepare.py": None})
    assert checkout_state(repo) == before
    assert "prepare.py" not in rat.list_files(cr.sha)
    assert cr.changed == ["prepare.py"]


PATCH_AB = """\
--- a/train.py
+++ b/train.py
@@ -1,2 +1,2 @@
-LR = 0.1
+LR = 0.3
 STEPS = 10
"""


def test_make_commit_applies_an_a_b_patch_without_touching_the_checkout(repo):
    before = checkout_state(repo)
    rat = Ratchet(repo)
    cr = rat.make_commit(rat.head(), "patch", patch=PATCH_AB)
    assert checkout_state(repo) == before
    assert rat.read_files(cr.sha, ["train.py"])["train.py"] == "LR = 0.3\nSTEPS = 10\n"
    assert cr.changed == ["train.py"]


def test_make_commit_applies_a_p0_patch(repo):
    rat = Ratchet(repo)
    patch = PATCH_AB.replace("a/train.py", "train.py").replace("b/train.py", "train.py")
    cr = rat.make_commit(rat.head(), "patch p0", patch=patch)
    assert rat.read_files(cr.sha, ["train.py"])["train.py"] == "LR = 0.3\nSTEPS = 10\n"


def test_a_patch_that_does_not_apply_raises_git_error(repo):
    rat = Ratchet(repo)
    before = checkout_state(repo)
    with pytest.raises(GitError, match="does not apply"):
        rat.make_commit(rat.head(), "bad", patch=PATCH_AB.replace("-LR = 0.1", "-LR = 9.9"))
    assert checkout_state(repo) == before


def test_changed_paths_between_commits(repo):
    rat = Ratchet(repo)
    base = rat.head()
    a = rat.make_commit(base, "a", files={"train.py": "LR = 1\n"})
    b = rat.make_commit(a.sha, "b", files={"prepare.py": None, "z/new.py": "1\n"})
    assert sorted(rat.changed_paths(base, b.sha)) == ["prepare.py", "train.py", "z/new.py"]
    assert rat.changed_paths(a.sha, a.sha) == []


def test_target_in_a_subdirectory_uses_target_relative_paths(tmp_path):
    repo = make_repo(tmp_path / "mono", {"README.md": "hi\n", "proj/train.py": "A = 1\n",
                                         "proj/autoresearch.toml": "x\n"})
    before = checkout_state(repo)
    rat = Ratchet(repo / "proj")
    assert rat.subdir == "proj"
    base = rat.head()
    assert set(rat.list_files(base)) == {"train.py", "autoresearch.toml"}
    cr = rat.make_commit(base, "sub", files={"train.py": "A = 2\n"})
    assert cr.changed == ["train.py"]
    assert git(repo, "show", f"{cr.sha}:proj/train.py") == "A = 2"
    patched = rat.make_commit(base, "sub patch", patch=(
        "--- a/train.py\n+++ b/train.py\n@@ -1 +1 @@\n-A = 1\n+A = 3\n"))
    assert git(repo, "show", f"{patched.sha}:proj/train.py") == "A = 3"
    # a change outside the target shows as ../path, so editable globs can never match it
    outside = Ratchet(repo).make_commit(base, "outside", files={"README.md": "changed\n"})
    assert rat.changed_paths(base, outside.sha) == ["../README.md"]
    assert checkout_state(repo) == before


def test_merge_onto_replays_a_change_onto_a_new_base(repo):
    rat = Ratchet(repo)
    base = rat.head()
    cand = rat.make_commit(base, "lr", files={"train.py": "LR = 0.2\nSTEPS = 10\n"})
    best = rat.make_commit(base, "prep", files={"prepare.py": "X = 2\n"})
    merged = rat.merge_onto(cand.sha, base, best.sha, "lr (rebased)")
    assert merged is not None
    assert rat.parent_of(merged) == best.sha
    got = rat.read_files(merged, ["train.py", "prepare.py"])
    assert got == {"train.py": "LR = 0.2\nSTEPS = 10\n", "prepare.py": "X = 2\n"}


def test_merge_onto_returns_none_on_conflict(repo):
    rat = Ratchet(repo)
    base = rat.head()
    cand = rat.make_commit(base, "a", files={"train.py": "LR = 0.2\nSTEPS = 10\n"})
    best = rat.make_commit(base, "b", files={"train.py": "LR = 0.3\nSTEPS = 10\n"})
    assert rat.merge_onto(cand.sha, base, best.sha, "conflict") is None


def test_ensure_ignored_uses_info_exclude_not_gitignore(repo):
    rat = Ratchet(repo)
    rat.ensure_ignored()
    rat.ensure_ignored()  # idempotent
    exclude = (repo / ".git" / "info" / "exclude").read_text()
    assert exclude.count("/.autoresearch/") == 1
    assert not (repo / ".gitignore").exists()
    (repo / ".autoresearch" / "logs").mkdir(parents=True)
    (repo / ".autoresearch" / "logs" / "1.log").write_text("x")
    (repo / "results.tsv").write_text("commit\n")
    status = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert ".autoresearch" not in status
    assert "results.tsv" not in status
    assert "notes.txt" in status  # other untracked files still show


def test_ensure_ignored_for_a_target_in_a_subdirectory(tmp_path):
    repo = make_repo(tmp_path / "mono", {"proj/train.py": "A = 1\n"})
    Ratchet(repo / "proj").ensure_ignored()
    (repo / "proj" / ".autoresearch").mkdir()
    (repo / "proj" / ".autoresearch" / "x").write_text("x")
    (repo / "proj" / "results.tsv").write_text("x")
    (repo / "results.tsv").write_text("top-level one is the user's")
    status = git(repo, "status", "--porcelain", "--untracked-files=all")
    assert "proj/" not in status
    assert "results.tsv" in status


def test_worktree_checkout_removes_untracked_outputs(repo):
    rat = Ratchet(repo)
    base = rat.head()
    other = rat.make_commit(base, "x", files={"train.py": "LR = 9\n"})
    wt = rat.worktree("slot-0")
    assert rat.worktree("slot-0") == wt  # created once
    target = rat.checkout(wt, other.sha)
    (target / "out.bin").write_text("junk")
    (target / "cache").mkdir()
    (target / "cache" / "x").write_text("junk")
    (target / "train.py").write_text("edited in the worktree")
    target = rat.checkout(wt, base)
    assert not (target / "out.bin").exists()
    assert not (target / "cache").exists()
    assert (target / "train.py").read_text() == "LR = 0.1\nSTEPS = 10\n"
    assert git(wt, "rev-parse", "HEAD") == base
    # the user's checkout is unaffected
    assert (repo / "train.py").read_text().startswith("LR = 0.5")


def test_set_branch_compare_and_swap_refuses_a_stale_expectation(repo):
    rat = Ratchet(repo)
    base = rat.head()
    a = rat.make_commit(base, "a", files={"train.py": "A\n"}).sha
    b = rat.make_commit(base, "b", files={"train.py": "B\n"}).sha
    rat.set_branch("t1", base)
    rat.set_branch("t1", a, expect=base)
    assert rat.branch_commit("t1") == a
    with pytest.raises(GitError):
        rat.set_branch("t1", b, expect=base)  # someone moved it to `a` meanwhile
    assert rat.branch_commit("t1") == a
    assert git(repo, "rev-parse", "refs/heads/autoresearch/t1") == a


def test_pins_live_under_refs_autoresearch_tag(repo):
    rat = Ratchet(repo)
    base = rat.head()
    c = rat.make_commit(base, "a", files={"train.py": "A\n"}).sha
    ref = rat.pin("t1", 7, c)
    assert ref == "refs/autoresearch/t1/00007"
    assert git(repo, "for-each-ref", "--format=%(refname) %(objectname)", "refs/autoresearch/") == \
        f"refs/autoresearch/t1/00007 {c}"
    # the pinned commit is not on any branch the user sees
    assert git(repo, "branch", "--list") == "* main"


def test_not_a_git_repository(tmp_path):
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(GitError) as info:
        Ratchet(plain)
    assert "is not inside a git repository" in str(info.value)
    assert "git init" in str(info.value)


def test_repository_without_commits(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    git(empty, "init", "-q")
    with pytest.raises(GitError) as info:
        Ratchet(empty).head()
    assert "has no commits yet" in str(info.value)


# --- in-process commits (pygit2) against the plumbing ------------------------------------------
_EDITS = [
    {"src/a/b.py": "z = 1\n", "new/dir/c.py": "q\n"},      # nested, and new directories
    {"src/a/b.py": None},                                   # a directory emptied goes away
    {"run.sh": "echo changed\n", "not/there.py": None},     # an executable rewritten; a no-op delete
    {"run.sh": None, "src/a/b.py": None, "top.txt": None},  # everything deleted: the empty tree
    {"top.txt": "t\n"},                                     # no change at all
    {"ünï cöde.txt": "x\n", "bin.dat": "\0\1\2\n"},         # unusual names, binary content
]


@pytest.mark.parametrize("files", _EDITS)
@pytest.mark.parametrize("subdir", ["", "proj"])
def test_in_process_commits_are_the_objects_git_plumbing_writes(tmp_path, monkeypatch, files,
                                                                 subdir):
    pytest.importorskip("pygit2")
    monkeypatch.setenv("GIT_AUTHOR_DATE", "1700000000 +0130")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "@1700000001 -0500")
    repo = make_repo(tmp_path / "repo", {f"{subdir}/{p}".lstrip("/"): t for p, t in
                                         {"src/a/b.py": "x\n", "top.txt": "t\n",
                                          "run.sh": "#!/bin/sh\n", "bin.dat": "\0\0\n"}.items()})
    git(repo, "update-index", "--chmod=+x", f"{subdir}/run.sh".lstrip("/"))
    git(repo, "commit", "-q", "-m", "executable")
    target = repo / subdir if subdir else repo
    monkeypatch.delenv("AUTORESEARCH_GIT_PLUMBING", raising=False)
    lib = Ratchet(target)
    monkeypatch.setenv("AUTORESEARCH_GIT_PLUMBING", "1")
    plumbing = Ratchet(target)
    assert lib.in_process and not plumbing.in_process
    base = lib.head()
    for message in ("one line", "multi\n\nline\n"):
        a = lib.make_commit(base, message, files=files)
        b = plumbing.make_commit(base, message, files=files)
        assert (a.sha, a.tree, sorted(a.changed), a.added, a.removed) == \
            (b.sha, b.tree, sorted(b.changed), b.added, b.removed)
        assert lib.commit_tree(a.tree, base, message) == plumbing.commit_tree(a.tree, base, message)
        assert list(lib._entries(a.sha, whole_repo=False)) == \
            list(plumbing._entries(a.sha, whole_repo=False))
        assert lib.archive(a.sha) == plumbing.archive(a.sha)
    assert lib.resolve("refs/heads/main") == plumbing.resolve("refs/heads/main") == base
    assert lib.resolve("refs/heads/missing") is None is plumbing.resolve("refs/heads/missing")


def test_in_process_commit_of_a_file_where_a_directory_was_falls_back_to_plumbing(tmp_path):
    pytest.importorskip("pygit2")
    repo = make_repo(tmp_path / "repo", {"pkg/mod.py": "x\n"})
    rat = Ratchet(repo)
    cr = rat.make_commit(rat.head(), "dir to file", files={"pkg/mod.py": None, "pkg": "file\n"})
    assert rat.read_files(cr.sha, ["pkg"]) == {"pkg": "file\n"}
    assert "pkg/mod.py" not in rat.list_files(cr.sha)


def test_in_process_dates_in_a_form_only_git_reads_are_left_to_git(tmp_path, monkeypatch):
    pytest.importorskip("pygit2")
    repo = make_repo(tmp_path / "repo", {"a.py": "x\n"})
    monkeypatch.setenv("GIT_AUTHOR_DATE", "2005-04-07T22:13:13+02:00")
    monkeypatch.setenv("GIT_COMMITTER_DATE", "2005-04-07T22:13:13+02:00")
    rat = Ratchet(repo)
    cr = rat.make_commit(rat.head(), "dated", files={"a.py": "y\n"})
    assert git(repo, "log", "-1", "--format=%ad %cd", "--date=iso-strict", cr.sha) == \
        "2005-04-07T22:13:13+02:00 2005-04-07T22:13:13+02:00"


@pytest.mark.parametrize("subdir", ["", "proj"])
def test_in_process_file_lists_are_ls_trees(tmp_path, monkeypatch, subdir):
    pytest.importorskip("pygit2")
    repo = make_repo(tmp_path / "repo", {f"{subdir}/{p}".lstrip("/"): "x\n" for p in
                                         ("a.py", "d/e/f.py", "ünï.txt")} | {"outside.txt": "o\n"})
    target = repo / subdir if subdir else repo
    monkeypatch.delenv("AUTORESEARCH_GIT_PLUMBING", raising=False)
    lib = Ratchet(target)
    monkeypatch.setenv("AUTORESEARCH_GIT_PLUMBING", "1")
    plumbing = Ratchet(target)
    head = lib.head()
    assert lib.list_files(head) == plumbing.list_files(head)
    assert sorted(lib.list_files(head))[:2] == ["a.py", "d/e/f.py"]
