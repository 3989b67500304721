"""Blob ids through the stat cache: equal to git's, re-hashed on any change, never whole in RAM."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from autoresearch import lockcheck
from autoresearch.lockcheck import CHUNK, FileHashes, git_blob_hash_file
from autoresearch.ratchet import git_blob_hash


def _old(path, seconds=100):
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns - seconds * 10**9))


@pytest.fixture
def later(monkeypatch):
    """The racy rule's clock, 100 s ahead: files written by the test count as settled."""
    monkeypatch.setattr(lockcheck, "_clock", lambda: time.time() + 100)


def test_the_streamed_id_is_gits(tmp_path):
    p = tmp_path / "w.bin"
    p.write_bytes(os.urandom(3 * CHUNK + 17))
    git = subprocess.run(["git", "hash-object", str(p)], capture_output=True, text=True).stdout
    assert git_blob_hash_file(p) == git.strip() == git_blob_hash(p.read_bytes())


def test_an_unchanged_file_is_not_read_again(tmp_path, monkeypatch, later):
    p = tmp_path / "locked.py"
    p.write_text("x = 1\n")
    _old(p)
    hashes = FileHashes()
    first = hashes.blob_id(p)
    calls = []
    monkeypatch.setattr("autoresearch.lockcheck.git_blob_hash_file",
                        lambda path: calls.append(path) or "never")
    assert hashes.blob_id(p) == first and calls == []


def test_a_rewrite_that_restores_size_and_mtime_is_still_seen(tmp_path, later):
    p = tmp_path / "locked.py"
    p.write_text("x = 1\n")
    _old(p)
    hashes = FileHashes()
    before = hashes.blob_id(p)
    st = os.stat(p)
    with open(p, "r+") as fh:       # same size, same inode
        fh.write("x = 2\n")
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))   # mtime put back; ctime cannot be
    assert hashes.blob_id(p) != before
    assert hashes.violations(tmp_path, {"locked.py": before}) == ["locked.py"]
    assert hashes.violations(tmp_path, {"missing.py": before}) == ["missing.py"]


def test_a_file_modified_just_now_is_not_cached(tmp_path):
    p = tmp_path / "fresh.py"
    p.write_text("a\n")
    hashes = FileHashes()
    hashes.blob_id(p)
    assert not hashes._seen    # racy: it could change again within the same timestamp


def test_the_cache_survives_a_restart_and_a_broken_cache_file_costs_only_a_rehash(tmp_path, later):
    p = tmp_path / "locked.py"
    p.write_text("x\n")
    _old(p)
    store = tmp_path / "cache.json"
    first = FileHashes(store)
    oid = first.blob_id(p)
    first.save()
    assert FileHashes(store)._seen[str(p)][1] == oid
    store.write_text("{not json")
    assert FileHashes(store).blob_id(p) == oid


def test_a_file_written_just_now_with_an_old_mtime_is_not_cached(tmp_path):
    """Attack: rewrite a file and set its mtime back, so the racy rule would think it settled;
    a second rewrite within the same timestamp tick could then reuse the cached id. The rule
    reads ctime, which no process can set back."""
    p = tmp_path / "locked.py"
    p.write_text("x = 1\n")
    _old(p)                      # mtime 100 s ago, ctime now
    hashes = FileHashes()
    hashes.blob_id(p)
    assert not hashes._seen


# -- a large check, made in bulk ----------------------------------------------------------------
def _tree(root, dirs: int = 3, per: int = 30) -> dict[str, str]:
    """dirs x per settled files (more than lockcheck.BULK_PATHS): path -> blob id."""
    expected = {}
    for d in range(dirs):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(per):
            p = root / f"d{d}" / f"f{i:02d}.py"
            p.write_text(f"V = {d * 100 + i}\n")
            _old(p)
            expected[f"d{d}/f{i:02d}.py"] = git_blob_hash(p.read_bytes())
    assert len(expected) >= lockcheck.BULK_PATHS
    return expected


def _rewrite_in_place(p):
    st = os.stat(p)
    data = p.read_bytes()
    p.write_bytes(data.replace(b"V", b"W"))
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns))


def _swap_for_link(p):
    copy = p.parent.parent.parent / f"outside-{p.name}"
    copy.write_bytes(p.read_bytes())
    p.unlink()
    p.symlink_to(copy)


def _dir_for_link(p):
    """The file's directory moved outside, a symlink to it in its place: the same bytes."""
    d = p.parent
    moved = d.parent.parent / f"outside-{d.name}"
    os.rename(d, moved)
    d.symlink_to(moved)


TAMPERS = {
    "rewritten in place, mtime restored": (_rewrite_in_place, ["d0/f01.py"]),
    "removed": (lambda p: p.unlink(), ["d1/f02.py"]),
    "a symlink to the same bytes": (_swap_for_link, ["d2/f03.py"]),
    "a fifo": (lambda p: (p.unlink(), os.mkfifo(p)), ["d0/f04.py"]),
    "a directory": (lambda p: (p.unlink(), p.mkdir()), ["d1/f05.py"]),
    "its directory a symlink": (_dir_for_link, [f"d2/f{i:02d}.py" for i in range(30)]),
}


@pytest.mark.parametrize("tamper", TAMPERS)
def test_a_large_check_sees_what_the_one_by_one_check_sees(tmp_path, later, monkeypatch, tamper):
    root = tmp_path / "tree" / "wt"
    expected = _tree(root)
    hashes = FileHashes()
    assert hashes.violations(root, expected) == []   # hashed once, cached (settled)
    reads = []
    monkeypatch.setattr(lockcheck, "git_blob_hash_file",
                        lambda path: reads.append(path) or git_blob_hash_file(path))
    keys: dict[str, tuple[int, ...]] = {}
    assert hashes.violations(root, expected, seen=keys) == [] and reads == []
    base = str(root) + "/"
    assert keys.keys() == expected.keys()
    assert all(keys[rel] is hashes._seen[base + rel][0] for rel in expected)   # by identity
    how, bad = TAMPERS[tamper]
    how(root / bad[0])
    bulk = hashes.violations(root, expected)
    monkeypatch.setattr(lockcheck, "BULK_PATHS", 10**9)
    assert hashes.violations(root, expected) == bulk == bad


def test_a_large_check_of_other_paths_makes_its_layout_again(tmp_path, later):
    root = tmp_path / "wt"
    expected = _tree(root)
    hashes = FileHashes()
    assert hashes.violations(root, expected) == []
    other = dict(expected)   # as many paths, one of them new (and missing on disk)
    del other["d0/f00.py"]
    other["d0/new.py"] = expected["d0/f00.py"]
    assert hashes.violations(root, other) == ["d0/new.py"]
    other = dict(expected, **{"d1/f07.py": expected["d1/f08.py"]})   # another blob expected
    assert hashes.violations(root, other) == ["d1/f07.py"]
    assert hashes.violations(root, expected) == []


def test_a_large_check_judges_the_commits_links_as_links(tmp_path, later):
    root = tmp_path / "wt"
    expected = _tree(root)
    (root / "link").symlink_to("d0/f00.py")
    expected["link"] = "0" * 40   # a link's blob id is not what is checked: its target is
    hashes = FileHashes()
    assert hashes.violations(root, expected, {"link": "d0/f00.py"}) == []
    (root / "link").unlink()
    (root / "link").symlink_to("d0/f01.py")
    assert hashes.violations(root, expected, {"link": "d0/f00.py"}) == ["link"]
