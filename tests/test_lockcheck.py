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
