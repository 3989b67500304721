"""Blob ids of files on disk, through a stat cache: hash a file only when it changed.

Guarantees:
- `FileHashes.blob_id(path)` is the id git gives the file's bytes, the same as
  `ratchet.git_blob_hash(path.read_bytes())`, without ever holding the file in memory: the
  file is streamed through sha1 in 1 MiB pieces.
- A file is re-hashed unless its size, mtime, ctime, inode and device all equal those seen when
  it was last hashed. ctime cannot be set by a process (utime and every write change it), so
  restoring a file's mtime after rewriting it does not hide the change. As in git's "racy"
  rule, a file changed within `RACY_SECONDS` of being hashed is not cached; "changed" is read
  from ctime, so setting the mtime back cannot make a fresh file look settled.
- `vouch(path, key, oid)` records an id a writer knows (the ratchet's checkout, for the files it
  wrote or checked and that are settled by its own racy rule), so they are not read again; any
  later change to the file changes its key and undoes the vouching.
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


def _key(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


class FileHashes:
    def __init__(self, path: Path | None = None):
        self.path = path
        self._lock = threading.Lock()
        self._seen: dict[str, tuple[list[int], str]] = {}
        self._dirty = False
        if path is not None:
            try:
                raw = json.loads(Path(path).read_text())
                self._seen = {p: (list(k), oid) for p, (k, oid) in raw.items()}
            except (OSError, ValueError, TypeError):
                self._seen = {}

    def blob_id(self, path: Path) -> str:
        """The file's git blob id (OSError when it cannot be read)."""
        name = os.path.abspath(path)
        st = os.stat(name)
        key = _key(st)
        with self._lock:
            hit = self._seen.get(name)
        if hit is not None and hit[0] == key:
            return hit[1]
        oid = git_blob_hash_file(Path(name))
        after = os.stat(name)
        if _key(after) == key and _clock() - after.st_ctime > RACY_SECONDS:
            with self._lock:
                self._seen[name] = (key, oid)
                self._dirty = True
        return oid

    def vouch(self, path: Path | str, key: list[int], oid: str) -> None:
        """Record that the file at path, with this stat key (size, mtime_ns, ctime_ns, inode,
        device), holds blob oid. For a writer that knows it (the checkout, for the files it
        wrote or checked), and that applies its own racy rule first: a file that may change
        within its timestamp tick must not be vouched for."""
        with self._lock:
            self._seen[os.path.abspath(path)] = (list(key), oid)

    def violations(self, root: Path, expected: dict[str, str]) -> list[str]:
        """The paths under root that are not regular files with the expected blob ids: changed,
        missing, unreadable, symlinks, fifos, directories. One lstat per unchanged file."""
        bad = []
        base = os.path.abspath(root)
        seen = self._seen
        for rel, oid in expected.items():
            name = os.path.join(base, rel)
            try:
                st = os.lstat(name)
                if not stat.S_ISREG(st.st_mode):
                    bad.append(rel)
                    continue
                hit = seen.get(name)   # a dict read is atomic; blob_id takes the lock
                if hit is not None and hit[1] == oid and hit[0] == _key(st):
                    continue
                if self.blob_id(Path(name)) != oid:
                    bad.append(rel)
            except OSError:
                bad.append(rel)
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
