"""The incremental checkout (checkout.py through Ratchet.checkout): what differs is rewritten,
what did not change is neither written nor read again, large blobs are streamed, and links are
judged by the commit's own paths. The attacks on it are in tests/attacks/test_checkout_attacks.py.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tracemalloc
from pathlib import Path

import pytest
from conftest import build_target, commit_all, git, ledger_experiments, train_source

from autoresearch import checkout as checkout_mod
from autoresearch import lockcheck
from autoresearch.checkout import STREAM_BYTES, plan
from autoresearch.evaluation import locked_violations
from autoresearch.ratchet import Ratchet

BIG = 8 * STREAM_BYTES + 123


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under root, never following a link: kind, mode and bytes (or target)."""
    out: dict[str, tuple] = {"": ("dir", stat.S_IMODE(os.lstat(root).st_mode))}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            rel = os.path.relpath(p, root)
            st = os.lstat(p)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode))
            elif stat.S_ISREG(st.st_mode):
                with open(p, "rb") as f:
                    out[rel] = ("file", stat.S_IMODE(st.st_mode), st.st_nlink,
                                hashlib.sha256(f.read()).hexdigest())
            else:
                out[rel] = ("other", stat.S_IFMT(st.st_mode))
    return out


@pytest.fixture
def repo(tmp_path):
    root = build_target(tmp_path, git_init=False, locked=["evaluate.py", "weights.bin"],
                        files={"pkg/mod.py": "X = 1\n"})
    (root / "weights.bin").write_bytes(os.urandom(BIG))
    git(root, "init", "-q", "-b", "main")
    a = commit_all(root, "a")
    (root / "train.py").write_text("VALUE = 2\n")
    b = commit_all(root, "b")
    return Ratchet(root), a, b


def _settled_checkout(r: Ratchet, commit: str):
    """Check out until every file is settled (written in an earlier tick than the marker's):
    the state the second experiment of a slot finds."""
    slot = r.worktree("slot-0")
    for _ in range(50):
        wt = r.checkout(slot, commit)
        m = r._manifests[os.path.abspath(slot)]
        if all(m.settled(w) for w in m.files.values()):
            return wt, m
    pytest.fail("the filesystem clock did not move")


def test_unchanged_files_are_neither_rewritten_nor_hashed_again(repo, monkeypatch):
    r, a, b = repo
    wt, _ = _settled_checkout(r, a)
    before = {p: os.stat(wt / p) for p in ("weights.bin", "evaluate.py", "train.py")}
    read = []
    monkeypatch.setattr(lockcheck, "git_blob_hash_file", lambda p: read.append(p) or "x")
    monkeypatch.setattr(checkout_mod._Sync, "_verify", lambda *a: read.append(a) or False)
    wt = r.checkout(r.worktree("slot-0"), b)
    for p in ("weights.bin", "evaluate.py"):
        now = os.stat(wt / p)
        assert (now.st_ino, now.st_ctime_ns) == (before[p].st_ino, before[p].st_ctime_ns)
    assert (wt / "train.py").read_text() == "VALUE = 2\n"   # b changed it
    tracked = r.list_files(b)
    # the locked-file check before and after the run answers from what the checkout told it
    assert locked_violations(wt, {p: tracked[p] for p in ("weights.bin", "evaluate.py")}) == []
    assert read == []
    assert not r._manifests[os.path.abspath(r.worktree("slot-0"))].rebuilt


def test_a_racy_file_is_checked_by_content_and_trusted_afterwards(repo, monkeypatch):
    r, a, _ = repo
    monkeypatch.setattr(checkout_mod, "_TICK_NS", 10**18)   # nothing ever settles
    r.checkout(r.worktree("slot-0"), a)
    verified = []
    real = checkout_mod._Sync._verify
    monkeypatch.setattr(checkout_mod._Sync, "_verify",
                        staticmethod(lambda fd, name, want, st: verified.append(name)
                                     or real(fd, name, want, st)))
    wt = r.checkout(r.worktree("slot-0"), a)
    assert sorted(verified) == sorted(["autoresearch.toml", "train.py", "evaluate.py",
                                       "README.md", "weights.bin", "mod.py"])
    # racy files are never vouched for: lockcheck reads them itself
    hashed = []
    monkeypatch.setattr(lockcheck, "_clock", lambda: 0.0)   # its own rule: nothing cached
    monkeypatch.setattr(lockcheck, "git_blob_hash_file",
                        lambda p: hashed.append(p.name) or "x")
    lockcheck.PROCESS_HASHES._seen.pop(os.path.abspath(wt / "evaluate.py"), None)
    assert locked_violations(wt, {"evaluate.py": r.list_files(a)["evaluate.py"]}) == \
        ["evaluate.py"] and hashed == ["evaluate.py"]


def test_a_large_blob_is_streamed_to_disk_never_held_whole(repo, tmp_path):
    r, a, _ = repo
    r.read_blobs([r.list_files(a)["train.py"]])   # the cat-file process is started already
    tracemalloc.start()
    try:
        r.checkout(r.worktree("slot-0"), a)
        r.materialize(a, tmp_path / "fresh")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (r.worktree("slot-0") / "weights.bin").stat().st_size == BIG
    assert peak < 3 * STREAM_BYTES < BIG


def test_switching_commits_back_and_forth_equals_a_fresh_materialize(repo, tmp_path):
    r, a, b = repo
    slot = r.worktree("slot-0")
    for i, commit in enumerate([a, b, a, b, b, a]):
        wt = r.checkout(slot, commit)
        fresh = r.materialize(commit, tmp_path / f"fresh-{i}")
        assert snapshot(wt) == snapshot(fresh)


def test_a_new_driver_rebuilds_a_worktree_it_has_no_manifest_for(repo, tmp_path):
    r, a, _ = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    (wt / "stray.txt").write_text("left by a step before the driver restarted\n")
    (wt / "train.py").write_text("tampered\n")
    again = Ratchet(r.target_root)
    wt = again.checkout(again.worktree("slot-0"), a)
    assert again._manifests[os.path.abspath(wt)].rebuilt
    assert snapshot(wt) == snapshot(again.materialize(a, tmp_path / "fresh"))


def test_an_error_while_walking_falls_back_to_a_whole_rebuild(repo, tmp_path, monkeypatch):
    r, a, b = repo
    wt = r.checkout(r.worktree("slot-0"), a)
    (wt / "stray.txt").write_text("x")

    def unreadable(self, fd, prefix, old):
        raise PermissionError(13, "Permission denied", prefix or ".")

    monkeypatch.setattr(checkout_mod._Sync, "_walk", unreadable)
    wt = r.checkout(r.worktree("slot-0"), b)
    assert r._manifests[os.path.abspath(wt)].rebuilt
    assert snapshot(wt) == snapshot(r.materialize(b, tmp_path / "fresh"))


def test_links_are_judged_by_the_commits_own_paths():
    rows = [(p, "120000", p) for p in ("in", "up", "abs", "chain", "via", "loop1", "loop2",
                                        "sub/back", "sub/out", "dot", "via_out")]
    rows.append(("file", "100644", "f"))
    links = {"in": b"file", "up": b"../x", "abs": b"/etc/passwd", "chain": b"sub/back",
             "via": b"dot/..", "loop1": b"loop2", "loop2": b"loop1", "sub/back": b"../file",
             "sub/out": b"../../x", "dot": b".", "via_out": b"abs/x"}
    wanted = plan(rows, links)
    kinds = {p: w.how for p, w in wanted.items()}
    assert kinds == {"in": "link", "up": "file", "abs": "file", "chain": "link",
                     "via": "file",   # dot -> . then .. above the root: outside
                     "loop1": "file", "loop2": "file", "sub/back": "link", "sub/out": "file",
                     "dot": "link", "via_out": "file", "file": "file"}
    assert wanted["in"].target == "file"


@pytest.mark.parametrize("sandbox", [False, True])
def test_a_committed_symlink_leaves_experiments_valid_and_a_retargeted_one_is_caught(
        tmp_path, sandbox):
    """A target whose run step reads its settings through a committed in-tree symlink (a file
    link and a directory link): three experiments through the CLI are measured, not invalid
    (the check after the run expects the link the checkout wrote); a run step that points the
    link elsewhere in the tree is caught."""
    from conftest import ar, proposal, write_script

    if sandbox:
        from autoresearch.sandbox import SandboxUnavailable, check
        try:
            check()
        except SandboxUnavailable as e:
            pytest.skip(str(e))
    reads = "import settings, conf.values\nassert settings.OK and conf.values.OK\n"
    root = build_target(tmp_path, git_init=False, sandbox=sandbox,
                        files={"real_settings.py": "OK = True\n", "pkg/values.py": "OK = True\n",
                               "other.py": "OK = False\n"})
    (root / "settings.py").symlink_to("real_settings.py")
    (root / "conf").symlink_to("pkg")
    (root / "train.py").write_text(train_source(10.0, extra=reads))
    git(root, "init", "-q", "-b", "main")
    commit_all(root, "a target with links")
    retarget = "import os\nos.unlink('settings.py')\nos.symlink('other.py', 'settings.py')\n"
    script = write_script(tmp_path / "proposals.jsonl", [
        proposal(5.0, extra=reads), proposal(7.0, extra=reads), proposal(3.0, extra=reads),
        proposal(1.0, extra=reads + retarget, description="retarget")])
    p = ar(root, "run", "--agent", f"script:{script}", "--policy", "greedy", "--tag", "links",
           "--max-experiments", "5")
    assert p.returncode == 0, p.stdout + p.stderr
    rows = {e.description: e for e in ledger_experiments(root, "links")}
    got = {d: (e.status.value, e.metric) for d, e in rows.items()}
    assert got == {"baseline": ("keep", 10.0), "value 5.0": ("keep", 5.0),
                   "value 7.0": ("discard", 7.0), "value 3.0": ("keep", 3.0),
                   "retarget": ("invalid", None)}, got
    assert rows["retarget"].reason == "the run step modified tracked file(s): settings.py"
