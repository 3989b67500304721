"""Attacks on the kernel's notice (treewatch.py): the checks after a step look only at the paths
inotify names, so each attack changes a tracked file in a way a directory-only watch, or a
watch armed a moment too late, would not report. The check after the step (as the local
executor makes it: `Ratchet.changed`, then the locked/tracked check on what it names) must flag
the file, and the next checkout must make the worktree exactly the commit again.
"""

from __future__ import annotations

import mmap
import os
import shutil
from pathlib import Path

import pytest
from test_checkout_attacks import assert_exact, repo  # noqa: F401  (the fixture)

from autoresearch import treewatch
from autoresearch.evaluation import locked_violations
from autoresearch.ratchet import Ratchet

pytestmark = pytest.mark.skipif(not treewatch.available(), reason="no inotify here (Linux, inotify_simple and a free instance)")


def _check(r: Ratchet, slot: Path, commit: str) -> tuple[set[str] | None, list[str]]:
    """The check after a run step as the local executor makes it: what the notice names, and
    the violations among those (every file when it names nothing definite)."""
    files = r.list_files(commit)
    only = r.touched(slot, commit)
    paths = files if only is None else {p: files[p] for p in only if p in files}
    links = r.links(commit)
    return only, locked_violations(slot, paths, {p: links[p] for p in paths if p in links})


def _quiet(r: Ratchet, slot: Path, commit: str) -> None:
    """Check out until the notice names nothing (every file settled): only the notice, not the
    racy rule, then stands between a change and the checks."""
    for _ in range(50):
        r.checkout(slot, commit)
        if r.touched(slot, commit) == set():
            return
    pytest.fail("the filesystem clock did not move")


def _restore_times(p: Path, st: os.stat_result) -> None:
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def test_a_write_through_a_shared_mapping_is_noticed(repo, tmp_path):  # noqa: F811
    """inotify reports no write made through mmap; the descriptor's last close, after the
    mapping is gone, still names the file. (No utime after it: that alone would be reported.)"""
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    p = slot / "evaluate.py"
    st = os.stat(p)
    fd = os.open(p, os.O_RDWR)
    with mmap.mmap(fd, st.st_size) as m:
        os.close(fd)    # the descriptor closes first: the mapping alone holds the file
        m[:1] = b"#"
        m.flush()
    only, bad = _check(r, slot, a)
    assert only is not None and "evaluate.py" in only and bad == ["evaluate.py"]
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")


def test_a_write_through_a_hard_link_made_outside_is_noticed(repo, tmp_path):  # noqa: F811
    """The file is written through a name in a directory nobody watches: its inode's own watch
    reports it (a watch on the directory alone would not)."""
    r, a, _b, outside = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    p = slot / "pkg" / "sub" / "mod.py"
    st = os.stat(p)
    os.link(p, outside / "alias")
    with open(outside / "alias", "r+b") as f:
        f.write(b"Y")
    _restore_times(p, st)
    only, bad = _check(r, slot, a)
    assert only is not None and "pkg/sub/mod.py" in only and bad == ["pkg/sub/mod.py"]
    wt = r.checkout(slot, a)
    assert_exact(r, wt, a, tmp_path / "fresh")
    # the alias now holds an inode no tracked path has: writing it changes nothing here
    with open(outside / "alias", "r+b") as f:
        f.write(b"Z")
    assert _check(r, slot, a)[1] == []
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")


def test_a_file_renamed_over_a_tracked_one_is_noticed(repo, tmp_path):  # noqa: F811
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    p = slot / "evaluate.py"
    st = os.stat(p)
    forged = slot / ".forged"
    forged.write_bytes(b"#" * st.st_size)
    os.rename(forged, p)
    _restore_times(p, st)
    only, bad = _check(r, slot, a)
    assert only is not None and "evaluate.py" in only and bad == ["evaluate.py"]
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")


def test_a_directory_swapped_for_an_edited_copy_is_noticed(repo, tmp_path):  # noqa: F811
    """The tracked directory is moved away and a copy with one file changed (times kept) put
    in its place: the new files have no watches, so every path under it is looked at."""
    r, a, _b, outside = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    os.rename(slot / "pkg", outside / "pkg")
    shutil.copytree(outside / "pkg", slot / "pkg", symlinks=True)
    p = slot / "pkg" / "sub" / "mod.py"
    st = os.stat(outside / "pkg" / "sub" / "mod.py")
    p.write_bytes(b"#" * st.st_size)
    _restore_times(p, st)
    only, bad = _check(r, slot, a)
    assert only is not None and "pkg/sub/mod.py" in only and bad == ["pkg/sub/mod.py"]
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")
    # the moved-away directory is no longer the tree's: changes in it are not reported here
    (outside / "pkg" / "sub" / "mod.py").write_text("elsewhere\n")
    assert _check(r, slot, a)[1] == []


def test_a_flood_of_events_makes_the_check_look_at_every_file(repo, tmp_path):  # noqa: F811
    """More events than the kernel queues (max_queued_events): the overflow is noticed, and the
    checks fall back to every file, so a change hidden in the flood is still found."""
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    limit = int(Path("/proc/sys/fs/inotify/max_queued_events").read_text())
    if limit > 40_000:
        pytest.skip(f"max_queued_events is {limit}: too many files to make here")
    for i in range(limit + 10):   # an IN_CREATE each, in a watched directory
        (slot / "pkg" / f"x{i}").touch()
    p = slot / "evaluate.py"
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"#")
    _restore_times(p, st)
    only, bad = _check(r, slot, a)
    assert only is None and bad == ["evaluate.py"]
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")
    _quiet(r, slot, a)   # a new watch after the overflow: definite answers again
    assert _check(r, slot, a) == (set(), [])


def test_a_change_before_the_watch_is_armed_is_caught_by_the_key(repo, tmp_path,  # noqa: F811
                                                                  monkeypatch):
    """A process rewrites a file the checkout just wrote before the watch on it is in place
    (a race the test forces): the key compared once the watch is armed shows it. The file's
    own write counts as settled here (a clock fine enough to tell it from the marker's), so
    that the racy rule, which would also mark it, does not hide what the key compare does."""
    from autoresearch.checkout import Manifest

    r, a, b, _ = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    monkeypatch.setattr(Manifest, "settled", lambda self, w: True)
    real_add = treewatch.TreeWatch._add

    def racing_add(self, rel, is_dir, inode):
        if rel == "train.py":   # b changes train.py: the checkout writes it, then arms it
            p = Path(self.root) / rel
            st = os.stat(p)
            with open(p, "r+b") as f:
                f.write(b"#")
            _restore_times(p, st)
        return real_add(self, rel, is_dir, inode)

    monkeypatch.setattr(treewatch.TreeWatch, "_add", racing_add)
    r.checkout(slot, b)
    monkeypatch.setattr(treewatch.TreeWatch, "_add", real_add)
    only, bad = _check(r, slot, b)
    assert only is not None and "train.py" in only and bad == ["train.py"]
    assert_exact(r, r.checkout(slot, b), b, tmp_path / "fresh")


def test_without_an_inotify_instance_every_file_is_checked(repo, tmp_path,  # noqa: F811
                                                           monkeypatch):
    """The user's inotify instances are used up (max_user_instances): the checkout works
    without a watch and the checks look at every file, so a change is still found."""
    def refused(*_a, **_k):
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(treewatch, "INotify", refused)
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    r.checkout(slot, a)
    assert r.touched(slot, a) is None
    p = slot / "evaluate.py"
    st = os.stat(p)
    with open(p, "r+b") as f:
        f.write(b"#")
    _restore_times(p, st)
    assert _check(r, slot, a) == (None, ["evaluate.py"])
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")


def test_a_watch_limit_reached_midway_makes_every_file_checked(repo, tmp_path,  # noqa: F811
                                                               monkeypatch):
    """inotify_add_watch refuses (max_user_watches) partway through arming: nothing armed is
    vouched for, and the answer is "every file" until a checkout arms a complete watch."""
    real_add = treewatch.TreeWatch._add
    calls = {"n": 0}

    def limited(self, rel, is_dir, inode):
        calls["n"] += 1
        if calls["n"] == 5:
            self.lost = True   # what _add does on ENOSPC
            return None
        return real_add(self, rel, is_dir, inode)

    monkeypatch.setattr(treewatch.TreeWatch, "_add", limited)
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    r.checkout(slot, a)
    assert r.touched(slot, a) is None
    monkeypatch.setattr(treewatch.TreeWatch, "_add", real_add)
    _quiet(r, slot, a)
    assert r.touched(slot, a) == set()


def test_a_commit_other_than_the_one_checked_out_gets_no_notice(repo):  # noqa: F811
    """A commit other than the one the worktree was last made: no notice is answered for it."""
    r, a, b, _ = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    assert r.touched(slot, a) == set()
    assert r.touched(slot, b) is None


# a write through a shared mapping, then the writable descriptor parked in a unix socket pair
# that holds itself in flight: its last close (IN_CLOSE_WRITE) waits for the kernel's socket
# garbage collector, long after the step's processes are dead and the check has run
PARKED_MAPPING = r'''
import array, mmap, os, socket, sys
fd = os.open(sys.argv[1], os.O_RDWR)
m = mmap.mmap(fd, 0)
m[0:1] = b"#"
m.close()
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
fds = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd, a.fileno(), b.fileno()]))]
a.sendmsg([b"x"], fds)
b.sendmsg([b"x"], fds)
os._exit(0)
'''


def _as_a_step(slot: Path, code: str, *args: str) -> None:
    """code run as a run step would run it: under bubblewrap where it can run here."""
    import subprocess
    import sys

    from autoresearch import sandbox

    argv = [sys.executable, "-c", code, *args]
    try:
        sandbox.check()
        argv = sandbox.wrap(sandbox.SandboxPolicy(cwd=slot, writable=(slot,)), argv)
    except sandbox.SandboxUnavailable:
        pass
    subprocess.run(argv, check=True, cwd=slot)


def test_a_mapping_written_with_its_last_close_put_off_is_noticed(repo, tmp_path):  # noqa: F811
    """Found by review: with only IN_CLOSE_WRITE to show a write through a mapping, this step
    passed the check. The open it needs is reported when it happens."""
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    _as_a_step(slot, PARKED_MAPPING, str(slot / "evaluate.py"))
    assert (slot / "evaluate.py").read_bytes()[:1] == b"#"
    only, bad = _check(r, slot, a)
    assert only is not None and "evaluate.py" in only and bad == ["evaluate.py"]
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")


def test_the_worktree_itself_replaced_by_an_edited_copy_is_noticed(repo, tmp_path):  # noqa: F811
    """Without the sandbox a step can move its whole worktree aside and put an edited copy in
    its place (under it the worktree is a mount point and cannot move). Found by review: the
    root's own move marked no path."""
    r, a, _b, _ = repo
    slot = r.worktree("slot-0")
    _quiet(r, slot, a)
    aside = slot.parent / "aside"
    os.rename(slot, aside)
    shutil.copytree(aside, slot, symlinks=True)
    p, st = slot / "evaluate.py", os.stat(aside / "evaluate.py")
    p.write_bytes(b"#" * st.st_size)
    _restore_times(p, st)
    only, bad = _check(r, slot, a)
    assert bad == ["evaluate.py"], only
    assert_exact(r, r.checkout(slot, a), a, tmp_path / "fresh")


def test_directories_swapped_keep_their_watches_afterwards(tmp_path):
    """Found by review: one step swaps two directories (invalid, and repaired); re-arming them
    removed the watch the other path had just taken over, so a later step that replaced a
    subdirectory with an edited copy went unseen."""
    import subprocess

    from conftest import build_target

    root = build_target(tmp_path, files={"A/a.py": "a\n", "A/s/f.py": "F = 1\n",
                                         "B/b.py": "b\n", "B/s/g.py": "G = 1\n"})
    r = Ratchet(root)
    c = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                       text=True, check=True).stdout.strip()
    slot = r.worktree("slot-0")
    _quiet(r, slot, c)
    os.rename(slot / "A", slot / ".t")
    os.rename(slot / "B", slot / "A")
    os.rename(slot / ".t", slot / "B")
    assert _check(r, slot, c)[1]           # the swap: invalid
    _quiet(r, slot, c)                     # repaired
    for d in ("A", "B"):                   # a later step, in each of them
        os.rename(slot / d / "s", slot / d / ".old")
        shutil.copytree(slot / d / ".old", slot / d / "s")
        edited = next((slot / d / "s").iterdir())
        edited.write_text("TAMPERED = 1\n")
        only, bad = _check(r, slot, c)
        assert bad == [f"{d}/s/{edited.name}"], (d, only, bad)
        _quiet(r, slot, c)
