"""The ratchet never trusts a place a step can write: worktrees are rebuilt from the object store,
and nothing a step planted (.git file, attributes, hooks, filters) runs."""

from __future__ import annotations

import os
import subprocess

from conftest import commit_all, git

from autoresearch.ratchet import Ratchet


def _repo(tmp_path):
    root = tmp_path / "repo"
    root.mkdir()
    (root / "train.py").write_text("x = 1\n")
    (root / "run.sh").write_text("#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    (root / "inside").symlink_to("train.py")
    (root / "outside").symlink_to("/etc/hostname")
    git(root, "init", "-q", "-b", "main")
    return root, commit_all(root, "c")


def test_a_checkout_is_written_from_the_object_store_whatever_the_step_left(tmp_path):
    root, head = _repo(tmp_path)
    r = Ratchet(root)
    wt = r.checkout(r.worktree("slot-0"), head)
    assert sorted(os.listdir(wt)) == ["inside", "outside", "run.sh", "train.py"]   # no .git
    assert os.access(wt / "run.sh", os.X_OK)
    assert (wt / "inside").is_symlink() and os.readlink(wt / "inside") == "train.py"
    # a link out of the tree is written as a plain file holding its target, never followed
    assert not (wt / "outside").is_symlink() and (wt / "outside").read_text() == "/etc/hostname"

    # a step plants a .git file pointing at a repo whose attributes run a smudge filter
    evil = tmp_path / "evil"
    subprocess.run(["git", "init", "-q", "--bare", str(evil)], check=True)
    (evil / "info" / "attributes").parent.mkdir(exist_ok=True)
    (evil / "info" / "attributes").write_text("* filter=pwn\n")
    pwned = tmp_path / "pwned"
    with open(evil / "config", "a") as f:
        f.write(f'[filter "pwn"]\n\tsmudge = touch {pwned}; cat\n')
    (wt / ".git").write_text(f"gitdir: {evil}\n")
    (wt / ".gitattributes").write_text("* filter=pwn\n")
    (wt / "train.py").write_text("tampered\n")
    (wt / "leftover.bin").write_text("x")

    wt = r.checkout(r.worktree("slot-0"), head)
    assert not pwned.exists()
    assert sorted(os.listdir(wt)) == ["inside", "outside", "run.sh", "train.py"]
    assert (wt / "train.py").read_text() == "x = 1\n"


def test_git_runs_without_hooks_or_fsmonitor_from_the_repository_config(tmp_path):
    root, head = _repo(tmp_path)
    marker = tmp_path / "ran"
    hook = root / ".git" / "hooks" / "reference-transaction"
    hook.write_text(f"#!/bin/sh\ntouch {marker}\n")
    hook.chmod(0o755)
    git(root, "config", "core.fsmonitor", f"touch {marker}")
    r = Ratchet(root)
    r.set_branch("t", head)
    c = r.make_commit(head, "m", files={"train.py": "x = 2\n"})
    r.checkout(r.worktree("slot-0"), c.sha)
    assert r.diff(head, c.sha) and not marker.exists()


def test_the_archive_is_built_from_blobs_without_export_substitution(tmp_path):
    import io
    import tarfile

    root, _ = _repo(tmp_path)
    (root / ".gitattributes").write_text("train.py export-subst\n")
    (root / "train.py").write_text("x = '$Format:%H$'\n")
    head = commit_all(root, "subst")
    with tarfile.open(fileobj=io.BytesIO(Ratchet(root).archive(head))) as tar:
        assert tar.extractfile("train.py").read() == b"x = '$Format:%H$'\n"
