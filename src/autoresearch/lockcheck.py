"""Blob ids of files on disk, through a stat cache: hash a file only when it changed.

Guarantees:
- `FileHashes.blob_id(path)` is the id git gives the file's bytes, the same as
  `ratchet.git_blob_hash(path.read_bytes())`, without ever holding the file in memory: the
  file is streamed through sha1 in 1 MiB pieces.
- A file is re-hashed unless its size, mtime, ctime, inode, device, mode and link count all
  equal those seen when it was last hashed. ctime cannot be set by a process (utime and every write change it), so
  restoring a file's mtime after rewriting it does not hide the change. As in git's "racy"
  rule, a file changed within `RACY_SECONDS` of being hashed is not cached; "changed" is read
  from ctime, so setting the mtime back cannot make a fresh file look settled.
- `vouch(path, key, oid)` records an id a writer knows (the ratchet's checkout, for the files it
  wrote or checked and that are settled by its own racy rule), so they are not read again; any
  later change to the file changes its key and undoes the vouching.
- `violations(root, expected, links, seen)` checks a tree in one lstat per unchanged file; a
  path in `links` must be a symlink with exactly that target (a committed link the checkout
  wrote as a link), every other path a regular file with the expected blob id. With `seen` it
  records every path's full lstat key, so a caller that knows nothing ran since (the ratchet's
  next checkout of the same slot) need not lstat the tree again.
- The cache may be saved to a JSON file (the session keeps one under .autoresearch/); a
  missing, unreadable or foreign cache file only costs a re-hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import threading
import time
from collections.abc import Iterable
from pathlib import Path

CHUNK = 1 << 20
RACY_SECONDS = 2.0
_clock = time.time   # the racy rule's clock (tests move it forward instead of waiting)


def git_blob_hash_file(path: Path) -> str:
    """The git blob id of a file's bytes, streamed."""
    size = os.stat(path).st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """size, mtime, ctime, inode, device, st_mode, link count: the key ids are cached under,
    and the one the checkout records."""
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev, st.st_mode,
            st.st_nlink)


def _open_dir(path: str) -> int:
    """A descriptor of the directory at path, never a symlink in its place (-1: none)."""
    try:
        return os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return -1


class FileHashes:
    def __init__(self, path: Path | None = None):
        self.path = path
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[tuple[int, ...], str]] = {}
        self._dirty = False
        if path is not None:
            try:
                raw = json.loads(Path(path).read_text())
                self._seen = {p: (tuple(k), oid) for p, (k, oid) in raw.items()}
            except (OSError, ValueError, TypeError):
                self._seen = {}

    def blob_id(self, path: Path) -> str:
        """The file's git blob id (OSError when it cannot be read)."""
        name = os.path.abspath(path)
        st = os.stat(name)
        key = stat_key(st)
        with self._lock:
            hit = self._seen.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        oid = git_blob_hash_file(Path(name))
        after = os.stat(name)
        if stat_key(after) == key and _clock() - after.st_ctime > RACY_SECONDS:
            with self._lock:
                self._seen[name] = (key, oid)
                self._dirty = True
        return oid

    def vouch(self, path: Path | str, key: tuple[int, ...], oid: str) -> None:
        """Record that the file at path, with this stat key (`stat_key`), holds blob oid. For a writer that knows it (the checkout, for the files it
        wrote or checked), and that applies its own racy rule first: a file that may change
        within its timestamp tick must not be vouched for."""
        with self._lock:
            self._seen[os.path.abspath(path)] = (tuple(key), oid)

    def vouch_many(self, root: str, items: Iterable[tuple[str, tuple[int, ...], str]]) -> None:
        """`vouch` for (root-relative path, key, oid) rows; root is absolute."""
        base = root.rstrip("/") + "/"
        with self._lock:
            for rel, key, oid in items:
                self._seen[base + rel] = (key, oid)

    def violations(self, root: Path, expected: dict[str, str],
                   links: dict[str, str] | None = None,
                   seen: dict[str, tuple[int, ...]] | None = None) -> list[str]:
        """The paths under root that are not what the commit holds: a path of `links` that is
        not a symlink to exactly that target; any other path that is not a regular file with
        the expected blob id (changed, missing, unreadable, a symlink, a fifo, a directory).
        One lstat per unchanged file, by name in its directory's descriptor (a directory
        replaced by a symlink fails every path under it); with `seen`, every lstat key is
        recorded there (`stat_key`, by root-relative path)."""
        bad = []
        base = os.path.abspath(root).rstrip("/") + "/"
        cache = self._seen   # a dict read is atomic; blob_id takes the lock
        stat_at = os.stat
        links = links or {}
        record = seen.__setitem__ if seen is not None else None
        here, fd = None, -1   # the directory of the last path, open: a stat by name is cheaper
        try:
            for rel, oid in expected.items():   # the hot loop: 5,000 files, one stat each
                folder, _, leaf = rel.rpartition("/")
                if folder != here:
                    if fd >= 0:
                        os.close(fd)
                    here, fd = folder, _open_dir(base + folder)
                name = base + rel
                try:
                    if fd < 0:
                        raise OSError(f"{base + folder} is not a directory that can be read")
                    st = stat_at(leaf, dir_fd=fd, follow_symlinks=False)
                    key = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev,
                           st.st_mode, st.st_nlink)
                    if links and rel in links:
                        if record is not None:
                            record(rel, key)
                        if not stat.S_ISLNK(st.st_mode) or \
                                os.readlink(leaf, dir_fd=fd) != links[rel]:
                            bad.append(rel)
                        continue
                    hit = cache.get(name)
                    if hit is not None and hit[0] == key and hit[1] == oid:
                        if record is not None:   # the cached key itself: the checkout that
                            record(rel, hit[0])  # vouched it knows it by identity
                        continue   # the key holds st_mode: it was a regular file when cached
                    if record is not None:
                        record(rel, key)
                    if not stat.S_ISREG(st.st_mode) or self.blob_id(Path(name)) != oid:
                        bad.append(rel)
                except OSError:
                    bad.append(rel)
        finally:
            if fd >= 0:
                os.close(fd)
        return bad

    def save(self) -> None:
        if self.path is None or not self._dirty:
            return
        with self._lock:
            data = {p: [k, oid] for p, (k, oid) in self._seen.items()}
            self._dirty = False
        tmp = Path(f"{self.path}.{os.getpid()}.tmp")
        try:
            tmp.write_text(json.dumps(data))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)


#: one cache for the process: the slots' worktrees keep their locked files between runs
PROCESS_HASHES = FileHashes()
