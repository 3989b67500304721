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
- A check of `BULK_PATHS` paths or more is made directory by directory in bulk: every file's
  lstat key is compared with its cached key and id with no bytecode per file; a directory
  where anything differs (or cannot be read) is judged again one file at a time, exactly as a
  small check is, so the bulk path decides nothing the one-by-one path would not. Its grouping
  of the paths by directory is kept per root and used only for exactly the same paths.
- The cache may be saved to a JSON file (the session keeps one under .autoresearch/); a
  missing, unreadable or foreign cache file only costs a re-hash.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
import os
import stat
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

CHUNK = 1 << 20
RACY_SECONDS = 2.0
BULK_PATHS = 64    # a check of this many paths or more is made in bulk, its layout kept
_LAYOUTS = 16      # layouts kept (one per root: a slot's worktree, an evaluator's copy)
_clock = time.time   # the racy rule's clock (tests move it forward instead of waiting)


def git_blob_hash_file(path: Path) -> str:
    """The git blob id of a file's bytes, streamed."""
    size = os.stat(path).st_size
    h = hashlib.sha1(b"blob %d\0" % size)
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            h.update(chunk)
    return h.hexdigest()


_STAT_KEY = operator.attrgetter("st_size", "st_mtime_ns", "st_ctime_ns", "st_ino", "st_dev",
                                "st_mode", "st_nlink")
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)


def stat_key(st: os.stat_result) -> tuple[int, ...]:
    """size, mtime, ctime, inode, device, st_mode, link count: the key ids are cached under,
    and the one the checkout records."""
    return _STAT_KEY(st)


@dataclass(frozen=True)
class _Layout:
    """The regular files of a check, grouped by directory: what a bulk check of the same paths
    under the same root reuses (made again when the paths change)."""

    rels: list[str]                        # root-relative paths, directory by directory
    names: list[str]                       # the same, absolute (the cache's keys)
    runs: list[tuple[str, list[str], int, int]]   # (directory, its files' names, rels[i:j])
    links: frozenset[str]                  # the paths checked as links instead

    @classmethod
    def of(cls, base: str, rels: list[str], links: frozenset[str]) -> _Layout:
        by_dir: dict[str, tuple[list[str], list[str]]] = {}   # folder -> (paths, names)
        for rel in rels:
            folder, _, leaf = rel.rpartition("/")
            paths, leaves = by_dir.setdefault(folder, ([], []))
            paths.append(rel)
            leaves.append(leaf)
        ordered: list[str] = []
        runs = []
        for folder, (paths, leaves) in by_dir.items():
            runs.append((folder, leaves, len(ordered), len(ordered) + len(leaves)))
            ordered += paths
        return cls(ordered, [base + rel for rel in ordered], runs, links)


def _stat_or_none(leaf: str, fd: int) -> tuple[int, ...] | None:
    try:
        return _STAT_KEY(os.stat(leaf, dir_fd=fd, follow_symlinks=False))
    except OSError:
        return None


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
        self._layouts: dict[str, _Layout] = {}   # root -> the layout of its last large check
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
        recorded there (`stat_key`, by root-relative path), the cached key object itself for a
        file that matched it. In expected's order."""
        base = os.path.abspath(root).rstrip("/") + "/"
        links = links or {}
        if len(expected) < BULK_PATHS:
            return self._one_by_one(base, expected, links, seen)
        layout, oids = self._layout_for(base, expected, links)
        hits = list(map(self._seen.get, layout.names))   # a dict read is atomic
        bad = set()
        for folder, leaves, i, j in layout.runs:
            fd = _open_dir(base + folder)
            try:
                if fd >= 0 and self._as_cached(fd, leaves, hits[i:j], oids[i:j]):
                    if seen is not None:
                        seen.update(zip(layout.rels[i:j], map(_FIRST, hits[i:j]), strict=True))
                    continue
                for rel, leaf, oid, hit in zip(layout.rels[i:j], leaves, oids[i:j], hits[i:j],
                                               strict=True):   # one by one: what differs
                    key = _stat_or_none(leaf, fd) if fd >= 0 else None
                    if not self._judge(rel, base + rel, key, oid, hit, seen):
                        bad.add(rel)
            finally:
                if fd >= 0:
                    os.close(fd)
        if layout.links:
            bad.update(self._one_by_one(base, {p: expected[p] for p in layout.links}, links,
                                        seen))
        return [p for p in expected if p in bad] if bad else []

    @staticmethod
    def _as_cached(fd: int, leaves: list[str], hits: list, oids: list[str]) -> bool:
        """Is every file of the directory fd as the cache holds it, with the expected id? The
        hot loop, all in C (5,000 files: 5,000 lstat calls, no bytecode, and nothing made per
        file that outlives its comparison, so no garbage collection either)."""
        at = functools.partial(os.stat, dir_fd=fd, follow_symlinks=False)
        try:
            return list(map(_SECOND, hits)) == oids and all(
                map(operator.eq, map(_STAT_KEY, map(at, leaves)), map(_FIRST, hits)))
        except (OSError, TypeError):   # a file gone or unreadable, one not cached: one by one
            return False

    def _judge(self, rel: str, name: str, key: tuple[int, ...] | None, oid: str,
               hit: tuple[tuple[int, ...], str] | None,
               seen: dict[str, tuple[int, ...]] | None) -> bool:
        """Is the file at name (lstat key, None when it could not be had) blob oid?"""
        if key is None:
            return False
        if hit is not None and hit[0] == key and hit[1] == oid:
            if seen is not None:
                seen[rel] = hit[0]
            return True   # the key holds st_mode: it was a regular file when cached
        if seen is not None:
            seen[rel] = key
        try:
            return stat.S_ISREG(key[5]) and self.blob_id(Path(name)) == oid
        except OSError:
            return False

    def _layout_for(self, base: str, expected: dict[str, str], links: dict[str, str]
                    ) -> tuple[_Layout, list[str]]:
        """The root's layout for expected's paths (made again when they changed) and the
        expected ids in its order."""
        linked = frozenset(p for p in links if p in expected)
        layout = self._layouts.get(base)
        if layout is not None and layout.links == linked and \
                len(layout.rels) + len(linked) == len(expected):
            try:   # every path of the layout is expected, and as many: the same paths
                return layout, list(map(expected.__getitem__, layout.rels))
            except KeyError:
                pass
        layout = _Layout.of(base, [p for p in expected if p not in linked], linked)
        with self._lock:
            self._layouts.pop(base, None)
            self._layouts[base] = layout
            while len(self._layouts) > _LAYOUTS:
                self._layouts.pop(next(iter(self._layouts)))
        return layout, list(map(expected.__getitem__, layout.rels))

    def _one_by_one(self, base: str, expected: dict[str, str], links: dict[str, str],
                    seen: dict[str, tuple[int, ...]] | None) -> list[str]:
        """violations for a few paths (or the links): one lstat and one judgement each."""
        bad = []
        here, fd = None, -1   # the directory of the last path, open: a stat by name is cheaper
        try:
            for rel, oid in expected.items():
                folder, _, leaf = rel.rpartition("/")
                if folder != here:
                    if fd >= 0:
                        os.close(fd)
                    here, fd = folder, _open_dir(base + folder)
                try:
                    if fd < 0:
                        raise OSError(f"{base + folder} is not a directory that can be read")
                    key = _STAT_KEY(os.stat(leaf, dir_fd=fd, follow_symlinks=False))
                    if rel in links:
                        if seen is not None:
                            seen[rel] = key
                        if not stat.S_ISLNK(key[5]) or \
                                os.readlink(leaf, dir_fd=fd) != links[rel]:
                            bad.append(rel)
                        continue
                except OSError:
                    bad.append(rel)
                    continue
                if not self._judge(rel, base + rel, key, oid, self._seen.get(base + rel), seen):
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
