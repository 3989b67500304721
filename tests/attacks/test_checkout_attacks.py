"""Attacks on the incremental checkout: a step tampers with its worktree so that the next
experiment inherits something the commit does not hold, or so that the checkout writes outside
the worktree.

Each attack checks out a commit into a slot, tampers with the tree the way a run step could,
then checks out again (the same commit, or the next one) and compares the worktree, byte for
byte and mode for mode, against a fresh `materialize` of that commit. Where the attack changes a
tracked file's bytes, the locked-file check (lockcheck's stat cache, which the checkout vouches
into) must still see the change before the next checkout: no fake keep. Victims outside the
worktree must be untouched (nothing is written through a link).

`coarse_clock` simulates a filesystem whose timestamps do not move within the test (every write
lands in the same tick, so ctime stays put): only git's racy rule catches a same-size rewrite
that restores the mtime on the same inode then.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from conftest import build_target, commit_all
from test_checkout import snapshot

from autoresearch import checkout as checkout_mod
from autoresearch.checkout import Layout
from autoresearch.evaluation import locked_violations
from autoresearch.ratchet import Ratchet

WEIGHTS = bytes(range(256)) * (6 * 4096 + 7)   # ~6 MiB: larger than STREAM_BYTES, streamed


def assert_exact(r: Ratchet, wt: Path, commit: str, tmp: Path, in_place: bool = True) -> None:
    """wt is exactly a fresh materialize of commit; in_place: repaired without the fallback to a
    whole rebuild (the incremental path itself handled what the step left)."""
    assert r._manifests[os.path.abspath(wt)].rebuilt is not in_place
    tmp.mkdir(exist_ok=True)
    fresh = tmp / f"fresh-{commit[:8]}-{len(list(tmp.iterdir()))}"
    r.materialize(commit, fresh)
    assert snapshot(wt) == snapshot(fresh)


@pytest.fixture
def repo(tmp_path):
    """A target with a locked evaluator, an executable, a streamed 6 MiB locked file, nested
    directories and links in and out of the tree; commit `a`, and `b` that changes, adds,
    removes and flips a file into a directory."""
    root = build_target(tmp_path, files={"run.sh": "#!/bin/sh\necho hi\n",
                                         "pkg/sub/mod.py": "X = 1\n", "switch": "a file\n"},
                        git_init=False, locked=["evaluate.py", "data/weights.bin"])
    (root / "data").mkdir()
    (root / "data" / "weights.bin").write_bytes(WEIGHTS)
    (root / "run.sh").chmod(0o755)
    (root / "link_in").symlink_to("train.py")
    (root / "link_dir").symlink_to("pkg/sub")
    (root / "link_out").symlink_to("/etc/hostname")
    (root / "link_up").symlink_to("pkg/../..")
    from conftest import git
    git(root, "init", "-q", "-b", "main")
    a = commit_all(root, "a")
    (root / "train.py").write_text("VALUE = 2\n")
    (root / "run.sh").chmod(0o644)
    (root / "pkg" / "sub" / "new.py").write_text("Y = 2\n")
    (root / "README.md").unlink()
    (root / "switch").unlink()
    (root / "switch").mkdir()
    (root / "switch" / "inner.txt").write_text("now a directory\n")
    b = commit_all(root, "b")
    outside = tmp_path / "outside"
    outside.mkdir()
    return Ratchet(root), a, b, outside


@pytest.fixture
def coarse_clock(monkeypatch):
    """Timestamps that never move (one tick for the whole test): every file is racy."""
    monkeypatch.setattr(checkout_mod, "_TICK_NS", 10**18)


def _rewrite_in_place(p: Path, data: bytes) -> None:
    """Same size, same inode, mtime put back (ctime cannot be)."""
    st = os.stat(p)
    assert len(data) == st.st_size
    with open(p, "r+b") as f:
        f.write(data)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _tracked(r: Ratchet, commit: str) -> dict[str, str]:
    """The commit's regular files -> blob ids (what the check after a run verifies)."""
    return {p: oid for p, oid in r.list_files(commit).items() if not p.startswith("link_")}


# -- the attacks ------------------------------------------------------------------------------
def test_a_locked_file_rewritten_with_its_mtime_restored_is_seen_and_rewritten(repo, tmp_path):
    r, a, _b, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    _rewrite_in_place(wt / "evaluate.py", b"#" * os.path.getsize(wt / "evaluate.py"))
    _rewrite_in_place(wt / "data" / "weights.bin", b"\0" * len(WEIGHTS))
    # no fake keep: the check before the next run sees both, vouching or not
    assert sorted(locked_violations(wt, _tracked(r, a))) == ["data/weights.bin", "evaluate.py"]
    wt = r.checkout(r.worktree("slot-0"), a)
    assert_exact(r, wt, a, tmp_path / "fresh")


def test_a_rewrite_within_the_timestamp_tick_is_caught_by_the_racy_rule(repo, tmp_path,
                                                                        coarse_clock):
    r, a, _b, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    before = os.stat(wt / "evaluate.py")
    _rewrite_in_place(wt / "evaluate.py", b"#" * before.st_size)
    _rewrite_in_place(wt / "data" / "weights.bin", b"\0" * len(WEIGHTS))
    assert os.stat(wt / "evaluate.py").st_ino == before.st_ino
    assert sorted(locked_violations(wt, _tracked(r, a))) == ["data/weights.bin", "evaluate.py"]
    wt = r.checkout(r.worktree("slot-0"), a)
    assert_exact(r, wt, a, tmp_path / "fresh")


def test_a_file_unlinked_and_created_again_on_the_same_inode_is_rewritten(repo, tmp_path,
                                                                         coarse_clock):
    r, a, _b, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    p = wt / "evaluate.py"
    st = os.stat(p)
    for _ in range(50):   # ext4 and tmpfs hand a freed inode to the next file made
        p.unlink()
        p.write_bytes(b"#" * st.st_size)
        os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
        if os.stat(p).st_ino == st.st_ino:
            break
    else:
        pytest.skip("this filesystem did not reuse the freed inode")
    wt = r.checkout(r.worktree("slot-0"), a)
    assert_exact(r, wt, a, tmp_path / "fresh")


def test_a_hard_link_to_a_file_outside_is_never_written_through(repo, tmp_path):
    r, a, b, outside = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    victim = outside / "victim.py"
    victim.write_text("the victim's own bytes\n")
    weights = outside / "weights.bin"
    weights.write_bytes(WEIGHTS)   # the very bytes the commit holds
    for rel, target in (("train.py", victim), ("data/weights.bin", weights)):
        (wt / rel).unlink()
        os.link(target, wt / rel)
    wt = r.checkout(r.worktree("slot-0"), a)   # train.py is rewritten: not into the victim
    assert_exact(r, wt, a, tmp_path / "fresh")
    assert victim.read_text() == "the victim's own bytes\n"
    assert weights.read_bytes() == WEIGHTS and os.stat(weights).st_nlink == 1
    os.link(wt / "train.py", outside / "kept-link.py")   # a link out to the tree's own file
    wt = r.checkout(r.worktree("slot-0"), b)
    assert_exact(r, wt, b, tmp_path / "fresh")
    assert (outside / "kept-link.py").read_bytes() == r.read_blobs([r.list_files(a)["train.py"]])[
        r.list_files(a)["train.py"]]


def test_a_symlink_to_a_file_outside_becomes_the_commits_file_again(repo, tmp_path):
    r, a, b, outside = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    fake = outside / "evaluate.py"
    fake.write_text("print('score: 0.1')\n")
    (wt / "evaluate.py").unlink()
    (wt / "evaluate.py").symlink_to(fake)
    (wt / "train.py").unlink()
    (wt / "train.py").symlink_to(outside / "train.py")
    (outside / "train.py").write_text("untouched\n")
    assert "evaluate.py" in locked_violations(wt, _tracked(r, a))
    wt = r.checkout(r.worktree("slot-0"), b)
    assert_exact(r, wt, b, tmp_path / "fresh")
    assert fake.read_text() == "print('score: 0.1')\n"
    assert (outside / "train.py").read_text() == "untouched\n"


def test_a_directory_replaced_by_a_symlink_outside_is_not_written_into(repo, tmp_path):
    r, a, b, outside = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    copy = outside / "pkg"
    os.rename(wt / "pkg", copy)            # the same files, now outside the tree
    (wt / "pkg").symlink_to(copy)
    wt = r.checkout(r.worktree("slot-0"), b)   # b adds pkg/sub/new.py
    assert_exact(r, wt, b, tmp_path / "fresh")
    assert not (copy / "sub" / "new.py").exists()
    assert (copy / "sub" / "mod.py").read_text() == "X = 1\n"


def test_stray_files_dirs_links_fifos_and_a_dot_git_are_removed(repo, tmp_path):
    r, a, _b, outside = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    (wt / ".git").write_text(f"gitdir: {outside}\n")
    (wt / ".gitattributes").write_text("* filter=pwn\n")
    (wt / "pkg" / "sub" / "json.py").write_text("raise SystemExit\n")   # a shadowing module
    (wt / "pkg" / "__pycache__").mkdir()
    (wt / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0" * 16)
    (wt / "cache" / "deep" / "er").mkdir(parents=True)
    (wt / "cache" / "deep" / "er" / "x").write_text("junk")
    (wt / "sitecustomize.py").symlink_to(outside / "sitecustomize.py")
    os.mkfifo(wt / "pkg" / "fifo")
    wt = r.checkout(r.worktree("slot-0"), a)
    assert_exact(r, wt, a, tmp_path / "fresh")
    assert sorted(os.listdir(outside)) == []


def test_a_stray_dot_git_directory_is_removed(repo, tmp_path):
    r, a, _b, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    (wt / ".git" / "hooks").mkdir(parents=True)
    (wt / ".git" / "config").write_text("[core]\n\tfsmonitor = touch /tmp/pwned\n")
    wt = r.checkout(r.worktree("slot-0"), a)
    assert_exact(r, wt, a, tmp_path / "fresh")


@pytest.mark.parametrize("clock", ["real", "coarse"])
def test_modes_a_step_changed_are_put_back(repo, tmp_path, clock, monkeypatch):
    if clock == "coarse":   # chmod's new ctime hidden: only the mode in the key tells
        monkeypatch.setattr(checkout_mod, "_TICK_NS", 10**18)
    r, a, b, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    (wt / "train.py").chmod(0o755)           # +x
    (wt / "run.sh").chmod(0o644)             # -x
    (wt / "evaluate.py").chmod(0o000)
    (wt / "pkg" / "sub").chmod(0o000)        # an unreadable directory
    (wt / "data").chmod(0o777)
    wt.chmod(0o700)
    wt = r.checkout(r.worktree("slot-0"), a)
    assert_exact(r, wt, a, tmp_path / "fresh")
    (wt / "pkg").chmod(0o000)
    wt = r.checkout(r.worktree("slot-0"), b)
    assert_exact(r, wt, b, tmp_path / "fresh")


def test_files_and_directories_swapped_by_a_step_are_put_back(repo, tmp_path):
    r, a, _b, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    (wt / "evaluate.py").unlink()
    (wt / "evaluate.py").mkdir()
    (wt / "evaluate.py" / "__init__.py").write_text("print('score: 0.1')\n")
    for p in (wt / "pkg" / "sub").iterdir():
        p.unlink()
    (wt / "pkg" / "sub").rmdir()
    (wt / "pkg" / "sub").write_text("not a directory\n")
    wt = r.checkout(r.worktree("slot-0"), a)
    assert_exact(r, wt, a, tmp_path / "fresh")


def test_a_fifo_in_place_of_a_racy_file_does_not_block_the_checkout(repo, tmp_path,
                                                                    coarse_clock):
    r, a, _b, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    (wt / "evaluate.py").unlink()
    os.mkfifo(wt / "evaluate.py")
    wt = r.checkout(r.worktree("slot-0"), a)   # opening the fifo to hash it would hang here
    assert_exact(r, wt, a, tmp_path / "fresh")


def test_a_step_that_replaces_the_worktree_with_a_symlink_is_rebuilt(repo, tmp_path):
    r, a, _b, outside = repo
    slot = r.worktree("slot-0")
    r.checkout(slot, a)
    os.rename(slot, outside / "slot")
    slot.symlink_to(outside / "slot")
    wt = r.checkout(slot, a)
    assert not slot.is_symlink()
    assert_exact(r, wt, a, tmp_path / "fresh", in_place=False)
    assert (outside / "slot" / "train.py").exists()   # the copy outside was not emptied


# -- the check's keys handed to the next checkout (one stat pass per experiment) ---------------
def _checked(r: Ratchet, slot: Path, commit: str) -> list[str]:
    """The check after a run step, its keys handed over as the local executor does."""
    wt = slot / r.subdir if r.subdir else slot
    keys: dict[str, tuple[int, ...]] = {}
    bad = locked_violations(wt, r.list_files(commit), r.links(commit), keys)
    r.checked(slot, keys)
    return bad


def _settled(r: Ratchet, slot: Path, commit: str) -> None:
    """Check out until every file is settled (written in an earlier clock tick than the
    marker): then only a key, never the bytes, decides whether a file is kept."""
    for _ in range(50):
        r.checkout(slot, commit)
        m = r._manifests[os.path.abspath(slot)]
        if all(m.settled(w) for w in m.files.values()):
            return
    pytest.fail("the filesystem clock did not move")


def test_the_check_after_a_run_sees_the_commits_links_as_untouched(repo):
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    r.checkout(slot, a)
    assert _checked(r, slot, a) == []
    os.unlink(slot / "link_in")
    os.symlink("README.md", slot / "link_in")   # another file of the tree
    assert _checked(r, slot, a) == ["link_in"]


@pytest.mark.parametrize("settled", [False, True], ids=["fresh", "settled"])
def test_strays_made_after_the_check_are_still_found_and_removed(repo, tmp_path, settled):
    """Settled, every directory of the tree is as the last checkout left it until the step's
    strays: only their directories' keys tell the walk to list them."""
    r, a, _b, outside = repo
    slot = r.worktree("slot-0")
    if settled:
        _settled(r, slot, a)
    else:
        r.checkout(slot, a)
    assert _checked(r, slot, a) == []
    (slot / ".git").write_text(f"gitdir: {outside}\n")
    (slot / "pkg" / "sub" / "json.py").write_text("raise SystemExit\n")
    (slot / "cache" / "deep").mkdir(parents=True)
    (slot / "sitecustomize.py").symlink_to(outside / "sitecustomize.py")
    os.mkfifo(slot / "pkg" / "fifo")
    wt = r.checkout(slot, a)
    assert_exact(r, wt, a, tmp_path / "fresh")


@pytest.mark.parametrize("rel", ["evaluate.py", "pkg/sub/mod.py"],
                         ids=["beside links", "in a directory judged in bulk"])
def test_a_file_replaced_after_the_check_is_rewritten_not_judged_on_the_old_key(repo, tmp_path,
                                                                                rel):
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    r.checkout(slot, a)
    assert _checked(r, slot, a) == []
    p = slot / rel
    st = os.stat(p)
    os.link(p, tmp_path / "held")   # the old inode stays in use: the new file gets another
    p.unlink()
    p.write_bytes(b"#" * st.st_size)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(p).st_ino != st.st_ino
    wt = r.checkout(slot, a)
    assert_exact(r, wt, a, tmp_path / "fresh")


@pytest.mark.parametrize("notice", [True, False], ids=["inotify", "lstat"])
@pytest.mark.parametrize("how", ["in place", "on the same inode"])
def test_a_change_after_the_check_is_seen_by_the_next_check(repo, tmp_path, monkeypatch, how,
                                                            notice):
    """A process that escaped the step's kill rewrites a file between the check and the next
    checkout, in place or as a new file that happens to get the freed inode. With the kernel's
    notice (treewatch.py) the next checkout is told and repairs it. Without it, the residual
    risk the handover keeps (checkout.py): checking out on the check's keys does not repair it,
    exactly as a rewrite just after a walk would not be; the check after the next run step
    sees it, so that experiment is never kept, and the checkout after it repairs the file."""
    from autoresearch import treewatch

    if notice and not treewatch.available():
        pytest.skip("no inotify here (Linux, inotify_simple and a free instance)")
    if not notice:
        monkeypatch.setenv(treewatch.DISABLE_ENV, "1")
    r, a, b, _ = repo
    slot = r.worktree("slot-0")
    _settled(r, slot, a)
    assert _checked(r, slot, a) == []
    p = slot / "evaluate.py"
    st = os.stat(p)
    if how == "in place":
        _rewrite_in_place(p, b"#" * st.st_size)
    else:
        for _ in range(50):   # ext4 and tmpfs hand a freed inode to the next file made
            p.unlink()
            p.write_bytes(b"#" * st.st_size)
            os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))
            if os.stat(p).st_ino == st.st_ino:
                break
        else:
            pytest.skip("this filesystem did not reuse the freed inode")
    wt = r.checkout(slot, b)
    if notice:
        assert_exact(r, wt, b, tmp_path / "fresh")
        assert _checked(r, slot, b) == []
        return
    assert "evaluate.py" in _checked(r, slot, b)
    wt = r.checkout(slot, b)   # the check's keys show the change: this checkout repairs it
    assert_exact(r, wt, b, tmp_path / "fresh")


def test_the_kernels_notice_spares_a_checkout_every_lstat(repo, monkeypatch, tmp_path):
    """With inotify, a checkout looks only at what changed since the last one: nothing, or
    the file a process rewrote in place with its mtime put back (and it is repaired)."""
    from autoresearch import treewatch

    if not treewatch.available():
        pytest.skip("no inotify here (Linux, inotify_simple and a free instance)")
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    _settled(r, slot, a)
    looked: list[int] = []
    real_key = checkout_mod._key
    monkeypatch.setattr(checkout_mod, "_key", lambda st: looked.append(st.st_ino) or real_key(st))
    r.checkout(slot, a)
    assert looked == []
    p = slot / "pkg" / "sub" / "mod.py"
    old = os.stat(p).st_ino
    _rewrite_in_place(p, b"#" * os.stat(p).st_size)
    wt = r.checkout(slot, a)
    assert looked and set(looked) <= {old, os.stat(p).st_ino}, looked   # that file alone
    assert_exact(r, wt, a, tmp_path / "fresh")


def test_keys_handed_over_spare_the_next_checkout_every_lstat(repo, monkeypatch):
    from autoresearch import treewatch

    monkeypatch.setenv(treewatch.DISABLE_ENV, "1")   # the handover, without the kernel's notice
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    _settled(r, slot, a)
    looked: list[int] = []
    real_key = checkout_mod._key

    def counting_key(st):
        looked.append(st.st_ino)
        return real_key(st)

    monkeypatch.setattr(checkout_mod, "_key", counting_key)
    r.checkout(slot, a)   # nothing handed over: the walk looks at every file
    assert len(looked) == len(r._manifests[os.path.abspath(slot)].files)
    assert _checked(r, slot, a) == []
    looked.clear()
    r.checkout(slot, a)
    assert looked == []


def test_strays_made_within_a_directorys_timestamp_tick_are_still_found(repo, tmp_path,
                                                                        monkeypatch):
    """A directory changed in the tick its key was recorded in keeps its timestamps (a coarse
    filesystem clock): simulated by keys whose times never move and never fall before a tick.
    Git's racy rule for directories: such a key is never trusted, the directory is listed."""
    monkeypatch.setattr(checkout_mod, "_DIR_KEY", lambda st: (
        0, 2**62, 2**62, st.st_ino, st.st_dev, st.st_mode, st.st_nlink))
    r, a, _b, outside = repo
    slot = r.worktree("slot-0")
    _settled(r, slot, a)
    assert _checked(r, slot, a) == []
    (slot / "pkg" / "sub" / "json.py").write_text("raise SystemExit\n")
    os.symlink(outside, slot / "pkg" / "sub" / "out")
    wt = r.checkout(slot, a)
    assert_exact(r, wt, a, tmp_path / "fresh")


@pytest.mark.parametrize("other_layout", [False, True], ids=["", "another commit's layout"])
@pytest.mark.parametrize("change", ["bytes", "mode", "one of two removed", "replaced", "added",
                                    "directory removed"])
def test_what_the_next_commit_changes_in_a_directory_judged_in_bulk_is_written(
        repo, tmp_path, change, other_layout):
    """pkg/sub holds no link, so after a handed-over check its walk is a bulk judgement, made
    without listing it when nothing was added, removed or renamed there since: a file the next
    commit changes (bytes or mode), removes, replaces or adds there must not ride on it. With
    another commit's layout handed to the walk as the last one's, it must not be used."""
    r, a, b, _ = repo
    from conftest import git
    git(r.repo, "checkout", "-q", a)
    sub = r.repo / "pkg" / "sub"
    (sub / "two.py").write_text("T = 2\n")
    base = commit_all(r.repo, "two files in pkg/sub")
    if change == "bytes":
        (sub / "mod.py").write_text("X = 3\n")
    elif change == "mode":
        (sub / "mod.py").chmod(0o755)
    elif change == "one of two removed":
        (sub / "two.py").unlink()
    elif change == "replaced":
        (sub / "two.py").unlink()
        (sub / "other.py").write_text("Z = 1\n")   # as many files, another name
    elif change == "directory removed":
        (sub / "two.py").unlink()
        (sub / "mod.py").unlink()
        (r.repo / "pkg" / "top.py").write_text("Z = 1\n")   # pkg stays, without sub
    else:
        (sub / "added.py").write_text("Y = 1\n")
    c = commit_all(r.repo, change)
    slot = r.worktree("slot-0")
    _settled(r, slot, base)
    assert _checked(r, slot, base) == []
    if other_layout:
        r._manifests[os.path.abspath(slot)].layout = Layout.of(r._listing(b).wanted,
                                                               r._listing(b).dirs)
    wt = r.checkout(slot, c)
    assert_exact(r, wt, c, tmp_path / "fresh")
    assert _checked(r, slot, c) == []


# -- through the real loop ----------------------------------------------------------------------
@pytest.mark.parametrize("notice", [True, False], ids=["inotify", "lstat"])
@pytest.mark.parametrize("evaluator", [True, False], ids=["evaluator", "run-only"])
def test_the_loop_never_hands_an_experiment_a_worktree_a_step_tampered_with(tmp_path, monkeypatch,
                                                                          evaluator, notice):
    """Steps of a real run (real subprocesses, sandbox off) tamper with their slot: the locked
    evaluator rewritten with its mtime restored, a tracked file hard-linked to a victim outside,
    a .git file and stray modules planted, the evaluator written through a shared mapping, a
    file renamed over a tracked one. Every checkout the loop makes equals a fresh
    materialize, nothing tampered is kept, and the victim is never written. With the kernel's
    notice (treewatch.py) the checks look only at what it names; without it, run-only (no
    evaluate step after the check), the check's keys are handed to the next checkout."""
    from autoresearch import treewatch

    if notice and not treewatch.available():
        pytest.skip("no inotify here (Linux, inotify_simple and a free instance)")
    if not notice:
        monkeypatch.setenv(treewatch.DISABLE_ENV, "1")
    import json
    from types import SimpleNamespace

    from conftest import train_source

    from autoresearch.cli import build_loop
    from autoresearch.config import load_target

    victim = tmp_path / "victim.txt"
    victim.write_text("the victim's own bytes\n")
    # generous limits: on a loaded machine (a disk saturated by a benchmark, say) the honest
    # experiment once came out as not kept with the default budget of 1 s and hard timeout of
    # 20 s; the test is about what the checkout hands over, not about speed
    score = "" if evaluator else "print(f'score: {VALUE}')\n"
    root = build_target(tmp_path, sandbox=False, budget=60, timeout=600,
                        **({} if evaluator else {"evaluate": None, "artifacts": None}),
                        files={"train.py": train_source(10.0, extra=score)})
    attacks = [
        "import os\nst = os.stat('evaluate.py')\nsrc = open('evaluate.py').read()\n"
        "open('evaluate.py', 'w').write(src.replace('float(', 'min(0.1,float(', 1)[:len(src)])\n"
        "os.utime('evaluate.py', ns=(st.st_atime_ns, st.st_mtime_ns))\n",
        f"import os\nos.unlink('README.md')\nos.link({str(victim)!r}, 'README.md')\n",
        "open('.git', 'w').write('gitdir: /nonexistent\\n')\n"
        "open('json.py', 'w').write('raise SystemExit\\n')\nos.makedirs('cache/x')\n",
        # through a shared mapping, whose writes raise no inotify event of their own
        "import mmap\nfd = os.open('evaluate.py', os.O_RDWR)\n"
        "m = mmap.mmap(fd, os.fstat(fd).st_size)\nos.close(fd)\nm[:1] = b'#'\nm.close()\n",
        # a new file renamed over a tracked one, its times put back
        "st = os.stat('README.md')\nopen('.x', 'w').write('x' * st.st_size)\n"
        "os.rename('.x', 'README.md')\n"
        "os.utime('README.md', ns=(st.st_atime_ns, st.st_mtime_ns))\n",
    ]
    proposals = [{"description": f"attack {i}",
                  "files": {"train.py": train_source(20.0, extra="import os\n" + code + score)}}
                 for i, code in enumerate(attacks)]
    proposals.append({"description": "honest", "files": {"train.py": train_source(5.0, extra=score)}})
    script = tmp_path / "proposals.jsonl"
    script.write_text("".join(json.dumps(p) + "\n" for p in proposals))

    seen: list[tuple[str, bool]] = []
    real = Ratchet.checkout

    def checked(self, worktree, commit):
        out = real(self, worktree, commit)
        fresh = self.materialize(commit, tmp_path / "fresh" / str(len(seen)))
        seen.append((commit, snapshot(out) == snapshot(fresh)))
        return out

    monkeypatch.setattr(Ratchet, "checkout", checked)
    handed: list[int] = []
    real_handover = Ratchet.checked
    monkeypatch.setattr(Ratchet, "checked", lambda self, wt, keys: (
        handed.append(len(keys)), real_handover(self, wt, keys)))
    args = SimpleNamespace(agent=f"script:{script}", policy="greedy", max_experiments=7, seed=0,
                           workers=1, executor="local")
    loop = build_loop(load_target(root), args, "tamper")
    loop.run_forever()
    exps = sorted(loop.ledger.experiments("tamper"), key=lambda e: e.seq)
    loop.ledger.close()
    assert len(seen) >= 6 and all(ok for _, ok in seen), seen
    got = {e.description: (e.status.value, e.metric, e.reason) for e in exps}
    assert {d: (status, metric) for d, (status, metric, _r) in got.items()} == {
        "baseline": ("keep", 10.0), "attack 0": ("invalid", None), "attack 1": ("invalid", None),
        "attack 2": ("discard", 20.0), "attack 3": ("invalid", None),
        "attack 4": ("invalid", None), "honest": ("keep", 5.0)}, got
    assert got["attack 0"][2] == "the run step modified locked file(s): evaluate.py"
    assert got["attack 1"][2] == "the run step modified tracked file(s): README.md"
    assert got["attack 3"][2] == "the run step modified locked file(s): evaluate.py"
    assert got["attack 4"][2] == "the run step modified tracked file(s): README.md"
    assert victim.read_text() == "the victim's own bytes\n"
    # the evaluate step runs unconfined after the check: then the next checkout walks
    assert handed == [] if notice else (len(handed) >= 6) is not evaluator, handed
