"""Incremental checkouts: make a directory exactly a commit's files, rewriting only what differs.

`sync(dest, wanted, blobs, old)` is how the ratchet fills a slot's worktree before every
experiment; `old` is the manifest of what the previous sync wrote there (None: write it whole).

Guarantees:
- Afterwards dest holds exactly the wanted entries: each file with its blob's bytes, mode 0o755
  for 100755 and the umask's default otherwise; each symlink that resolves inside the tree (by
  the commit's own paths and links, never by what is on disk) as a symlink, every other one as a
  regular file holding its target; directories with the umask's default mode; nothing else (no
  stray file, directory, symlink, fifo or `.git`).
- A file is kept without being written only when the manifest says this sync wrote it (or
  checked it) with the wanted blob id and kind, and its lstat key (size, mtime, ctime, inode,
  device, mode, link count) is the one recorded then. A process cannot set ctime (utime and every
  write change it), so a rewrite that restores the mtime still changes the key, and so does a
  file unlinked and created again on the same inode.
- Racy files, as in git: after writing, a marker file is created next to dest and its ctime read
  (the manifest's `tick`). A file whose recorded ctime is not strictly older than the tick could
  be rewritten within the same timestamp tick without its key changing, so the next sync checks
  its bytes (streamed) against the blob id instead of trusting it.
- The walk never follows a symlink: directories are opened with O_NOFOLLOW relative to their
  parent's descriptor, and a file is created with O_EXCL|O_NOFOLLOW after whatever stood at its
  path was unlinked, so nothing is written through a hard link, a symlink or a symlinked
  directory that a step left.
- One pass of lstat per experiment: `old.seen`, when given, holds lstat keys taken since the
  last sync with nothing run in between but what cannot write dest (the ratchet hands over
  those of the locked/tracked check after a run step, whose processes are all dead then;
  evaluation.py says when). An entry whose key is there, and whose directory entry still has
  that inode, is judged on it without an lstat. Every directory is opened and its lstat key
  read (fstat); it is listed (scandir, no stat of its entries), so that a name the commit does
  not hold is found and removed and an entry replaced since by one on another inode is looked
  at again, unless nothing can have been added to, removed from or renamed in it since the
  last sync: its key equals the one recorded once that sync had written everything, that key
  is settled (its ctime older than the tick, the racy rule again: a change after it moves the
  ctime, which no process can set back, and POSIX has every link, unlink, rename, creat,
  mkdir and rmdir mark the directory's ctime), and the last sync wrote exactly the paths this
  one wants (so the directory holds exactly those, on the inodes written then). Directories
  with nothing to list and nothing to repair are judged in bulk, with no bytecode per file
  (`Layout`: the paths grouped by directory). A process that escaped the
  step's kill (runner.py kills every one it can find) could still rewrite a file after that
  check, in place or on the inode just freed, and this sync would keep it: the same risk as a
  rewrite just after a walk, and in both cases the check after the next run step sees it (its
  key changed), so that experiment is invalid and never kept.
- No lstat of files at all with the kernel's notice (`old.notice`, set by the ratchet from
  its treewatch, on Linux): the paths it names as possibly changed since the last sync are
  looked at one by one as above; every other file counts as seen with the key recorded then,
  because its inode has been watched since it was written (treewatch.py says why nothing that
  would change its key goes unreported, and the one writer it cannot see: a process that
  escaped its step's kill, possible only without the sandbox, writing through a mapping).
  Files written within the timestamp tick of the last sync are always named (the racy rule).
- Any error while walking or repairing (an unreadable directory, say) falls back to removing
  dest and writing it whole, which is also what happens without a manifest.
- Blobs come through `blobs(oids, sink)` as streams; one larger than `STREAM_BYTES` is copied to
  disk in pieces and never held in memory whole.
"""

from __future__ import annotations

import hashlib
import operator
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .lockcheck import stat_key

STREAM_BYTES = 1 << 20      # larger blobs are copied to disk in pieces of this size
_TICK_NS = 1                # the filesystem clock's tick; tests coarsen it to force racy files
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_MAX_HOPS = 40              # symlinks followed when resolving one (Linux's limit)

#: (oids, sink): calls sink(oid, size, stream) for each oid; the sink reads exactly size bytes
BlobSource = Callable[[list[str], Callable[[str, int, BinaryIO], None]], None]


@dataclass(frozen=True, slots=True)
class Want:
    """One entry of the commit: written as a "file", an "exec" (0o755) file or a "link"."""

    how: str
    oid: str
    target: str | None = None   # a link's target


@dataclass(frozen=True, slots=True)
class Written:
    """What a sync left at a path: the entry it wrote (or checked) and its lstat key then."""

    want: Want
    key: tuple[int, ...]   # size, mtime_ns, ctime_ns, inode, device, st_mode, link count

    @property
    def how(self) -> str:
        return self.want.how

    @property
    def oid(self) -> str:
        return self.want.oid


@dataclass
class Manifest:
    files: dict[str, Written]   # repo-relative path -> what is there
    dir_mode: int               # the mode directories get (the umask's default)
    tick: int                   # the marker's ctime (ns) once everything was written
    rebuilt: bool = True        # written whole (no manifest, or the incremental path gave up)
    fresh: list[str] = field(default_factory=list)   # paths this sync wrote or checked again
    seen: dict[str, tuple[int, ...]] | None = None   # lstat keys taken since (see guarantees)
    #: the paths the kernel's notice names as changed since this sync (treewatch.py): every
    #: other file counts as seen with the key recorded here (see guarantees)
    notice: set[str] | None = None
    layout: Layout | None = None   # the paths by directory, exactly those of files
    dir_keys: dict[str, tuple[int, ...]] = field(default_factory=dict)   # at the end, by dir

    @property
    def vouched(self) -> bool:
        """Is something known of the files since this sync (keys handed over, or the notice)?"""
        return self.seen is not None or self.notice is not None

    def seen_key(self) -> Callable[[str], tuple[int, ...] | None]:
        """path -> the key it was seen with since this sync (None: not seen, look at it)."""
        if self.notice is not None:
            files, notice = self.files, self.notice
            return lambda rel: None if rel in notice or rel not in files else files[rel].key
        return (self.seen or {}).get

    def settled(self, w: Written) -> bool:
        """Does a change after this sync necessarily change w's key (ctime older than the tick)?"""
        return _coarse(w.key[2]) < self.tick


class _Rebuild(Exception):
    """The incremental path met something it does not repair in place."""


# a file's lstat key is the locked/tracked check's (lockcheck), so the keys it hands over are
# compared with those recorded here; a directory's is the same, under its own name (tests
# coarsen directories' clocks alone)
_key = stat_key
_DIR_KEY = stat_key


def _coarse(ns: int) -> int:
    return ns - ns % _TICK_NS


def dirs_of(paths: Iterable[str]) -> frozenset[str]:
    """Every directory that holds one of these repo-relative paths ("" not included)."""
    dirs = set()
    for p in paths:
        i = p.rfind("/")
        while i > 0:
            d = p[:i]
            if d in dirs:
                break
            dirs.add(d)
            i = d.rfind("/")
    return frozenset(dirs)


@dataclass(frozen=True)
class Layout:
    """The wanted paths grouped by directory, for the walk's bulk judgement of a directory that
    is as the last sync left it. Only a hint: a directory is judged in bulk when its entries
    are exactly its files and subdirectories here and each file passes the test the
    one-by-one walk applies, so a layout made for other paths costs speed, never exactness."""

    paths: list[str]       # the wanted paths it was made for, every one
    #: "" or "dir/" -> (its files' paths, their names, its subdirectories' names)
    by_dir: dict[str, tuple[list[str], list[str], list[str]]]

    def exactly(self, wanted: dict[str, Want]) -> bool:
        """Was it made for exactly these paths?"""
        return len(self.paths) == len(wanted) and all(map(wanted.__contains__, self.paths))

    @classmethod
    def of(cls, wanted: dict[str, Want], dirs: frozenset[str]) -> Layout:
        by_dir: dict[str, tuple[list[str], list[str], list[str]]] = {}
        for rel in wanted:
            folder, _, leaf = rel.rpartition("/")
            files = by_dir.setdefault(folder + "/" if folder else "", ([], [], []))
            files[0].append(rel)
            files[1].append(leaf)
        for d in dirs:
            folder, _, leaf = d.rpartition("/")
            by_dir.setdefault(folder + "/" if folder else "", ([], [], []))[2].append(leaf)
        return cls(list(wanted), by_dir)


_NAME = operator.attrgetter("name")
_INODE = os.DirEntry.inode
_KEY_OF = operator.attrgetter("key")
_WANT_OF = operator.attrgetter("want")
_INO = operator.itemgetter(3)


def _same(recorded: tuple[int, ...], now: tuple[int, ...]) -> bool:
    coarse = (1, 2)   # the timestamps, as the filesystem's clock can tell them apart
    return all((_coarse(a) == _coarse(b)) if i in coarse else a == b
               for i, (a, b) in enumerate(zip(recorded, now, strict=True)))


def plan(rows: list[tuple[str, str, str]], links: dict[str, bytes]) -> dict[str, Want]:
    """path -> Want for (path, git mode, blob id) rows; links holds the symlinks' blobs."""
    targets = {p: os.fsdecode(links[oid]) for p, mode, oid in rows if mode == "120000"}
    wanted = {}
    for path, mode, oid in rows:
        if mode == "120000":
            inside = _resolves_inside(path, targets)
            wanted[path] = Want("link", oid, targets[path]) if inside else Want("file", oid)
        else:
            wanted[path] = Want("exec" if mode == "100755" else "file", oid)
    return wanted


def _resolves_inside(path: str, targets: dict[str, str]) -> bool:
    """Does the link at path stay inside the tree, following the commit's links? An absolute
    link, a `..` above the root or a loop counts as outside."""
    here = path.split("/")[:-1]
    todo = targets[path].split("/")
    if targets[path].startswith("/"):
        return False
    hops = 0
    while todo:
        part = todo.pop(0)
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                return False
            here.pop()
            continue
        at = "/".join([*here, part])
        if at in targets:
            hops += 1
            if hops > _MAX_HOPS or targets[at].startswith("/"):
                return False
            todo = targets[at].split("/") + todo
            continue
        here.append(part)
    return True


def sync(dest: Path, wanted: dict[str, Want], blobs: BlobSource, old: Manifest | None,
         marker: Path | None, dirs: frozenset[str] | None = None) -> Manifest:
    """Make dest exactly `wanted` (see the module's guarantees); the new manifest. Without a
    marker nothing counts as settled (a one-off directory). dirs: `dirs_of(wanted)`, when the
    caller has it already."""
    from .sandbox import remove_tree

    dirs = dirs_of(wanted) if dirs is None else dirs
    if old is not None:
        try:
            manifest = _Sync(dest, wanted, blobs, old.dir_mode, dirs).incremental(old, marker)
            manifest.rebuilt = False
            return manifest
        except (OSError, _Rebuild):
            pass
    dest = Path(dest)
    if dest.is_symlink():
        dest.unlink()
    if dest.exists():
        remove_tree(dest)
    dest.mkdir(parents=True)
    dir_mode = stat.S_IMODE(os.lstat(dest).st_mode)
    return _Sync(dest, wanted, blobs, dir_mode, dirs).whole(marker)


class _Sync:
    def __init__(self, dest: Path, wanted: dict[str, Want], blobs: BlobSource, dir_mode: int,
                 dirs: frozenset[str]):
        self.dest = dest
        self.wanted = wanted
        self.blobs = blobs
        self.dir_mode = dir_mode
        self.dirs = dirs
        self.done: dict[str, Written] = {}
        self.fresh: list[str] = []   # what done holds that the old manifest did not
        self.fds: dict[str, int] = {}   # repo-relative directory ("" the root) -> open descriptor
        self.layout: Layout | None = None
        self.found: dict[str, tuple[int, ...]] = {}   # directory -> its key when opened

    # -- the two ways ---------------------------------------------------------------------------
    def whole(self, marker: Path | None) -> Manifest:
        try:
            self.fds[""] = os.open(self.dest, _DIR_FLAGS)
            self._write_missing()
            dir_keys = self._dir_keys()
        finally:
            self._close()
        return Manifest(self.done, self.dir_mode, _tick(marker), fresh=list(self.done),
                        dir_keys=dir_keys)

    def incremental(self, old: Manifest, marker: Path | None) -> Manifest:
        if not stat.S_ISDIR(os.lstat(self.dest).st_mode):
            raise _Rebuild
        self.layout = old.layout if old.layout is not None and old.layout.exactly(self.wanted) \
            else Layout.of(self.wanted, self.dirs)
        try:
            root = self.fds[""] = os.open(self.dest, _DIR_FLAGS)
            self._opened("", root)
            self._walk(root, "", old)
            self._write_missing()
            dir_keys = self._dir_keys()
        finally:
            self._close()
        return Manifest(self.done, self.dir_mode, _tick(marker), fresh=self.fresh,
                        layout=self.layout, dir_keys=dir_keys)

    def _dir_keys(self) -> dict[str, tuple[int, ...]]:
        """Every directory's lstat key now, once everything is written (by descriptor)."""
        return {rel: _DIR_KEY(os.fstat(fd)) for rel, fd in self.fds.items()}

    def _close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    # -- what is there --------------------------------------------------------------------------
    def _walk(self, fd: int, prefix: str, old: Manifest) -> None:
        # the hot loop (5,000 entries on a large tree). The check hands over, for a file that
        # matched the key this checkout vouched for, that very key object: `key is w.key` then
        # says "unchanged since the check" without touching the key's fields (a tuple compare
        # here is mostly cache misses), and a vouched key is a settled one
        files, wanted, dirs, done = old.files, self.wanted, self.dirs, self.done
        if old.vouched and self._unchanged(fd, prefix, old):
            return
        with os.scandir(fd) as listing:
            entries = list(listing)
        if old.vouched and self._as_left(fd, prefix, entries, old):
            return
        rels = [prefix + entry.name for entry in entries]
        keys = map(old.seen_key(), rels)
        for entry, rel, w, want, key in zip(entries, rels, map(files.get, rels),
                                            map(wanted.get, rels), keys, strict=True):
            if w is not None and key is w.key and w.want is want and key[3] == entry.inode():
                done[rel] = w
                continue
            name = entry.name
            if rel in dirs and entry.is_dir(follow_symlinks=False):
                sub = self.fds[rel] = os.open(name, _DIR_FLAGS, dir_fd=fd)
                self._opened(rel, sub)
                self._walk(sub, rel + "/", old)
                continue
            if w is not None and want is not None and (w.want is want or w.want == want):
                if key is None or key[3] != entry.inode():   # not seen, or replaced since
                    key = _key(entry.stat(follow_symlinks=False))
                if key == w.key and old.settled(w):   # unchanged and settled
                    done[rel] = w
                    continue
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
                key = _key(st)
                if _same(w.key, key) and (old.settled(w) or self._verify(fd, name, want, st)):
                    self._record(rel, Written(want, key))
                    continue
            _remove(fd, name, entry.is_dir(follow_symlinks=False))

    def _as_left(self, fd: int, prefix: str, entries: list[os.DirEntry], old: Manifest) -> bool:
        """The walk of one directory in bulk (no bytecode per file), when it holds exactly its
        layout's entries and every file is judged kept by the one-by-one walk's first test: the
        check's key is the one this checkout recorded, on the inode the directory entry has,
        and the commit wants what was written. False (nothing done): walk it one by one."""
        assert self.layout is not None and old.vouched
        here = self.layout.by_dir.get(prefix)
        if here is None:
            return False
        rels, leaves, subdirs = here
        if len(entries) != len(leaves) + len(subdirs):
            return False
        by_name = dict(zip(map(_NAME, entries), entries, strict=True))
        written = self._as_written(rels, old)
        try:   # and each on the inode its directory entry has now
            if written is None or list(map(_INO, map(_KEY_OF, written))) != \
                    list(map(_INODE, map(by_name.__getitem__, leaves))):
                return False
        except KeyError:   # a name not there
            return False
        subs = [by_name.get(name) for name in subdirs]
        if not all(entry is not None and entry.is_dir(follow_symlinks=False)
                   and prefix + entry.name in self.dirs for entry in subs):
            return False
        self._keep(fd, prefix, rels, written, subdirs, old)
        return True

    def _unchanged(self, fd: int, prefix: str, old: Manifest) -> bool:
        """The walk of a directory that no entry was added to, removed from or renamed in since
        the last sync, judged without listing it: its key (ctime above all) is the one that
        sync recorded once everything was written, and settled (older than its tick), and
        the last sync wrote exactly the paths this one wants (so the directory holds exactly
        its layout's entries, on the inodes written then). Each file is judged as `_as_left`
        judges it. False (nothing done): list it."""
        assert self.layout is not None and old.vouched
        here = self.layout.by_dir.get(prefix)
        recorded = old.dir_keys.get(prefix[:-1])
        if here is None or self.layout is not old.layout or recorded is None or \
                self.found[prefix[:-1]] != recorded or _coarse(recorded[2]) >= old.tick:
            return False
        rels, _leaves, subdirs = here
        written = self._as_written(rels, old)
        if written is None:
            return False
        self._keep(fd, prefix, rels, written, subdirs, old)
        return True

    def _as_written(self, rels: list[str], old: Manifest) -> list[Written] | None:
        """The last sync's records of these files when every one passes the one-by-one walk's
        first test, in bulk: the check's key is the very key this checkout recorded, and the
        commit wants what was written. None: a path not written last time, or one that differs."""
        assert old.vouched
        written = list(map(old.files.get, rels))
        if old.notice is not None:   # none of them named: each as written, so seen as written
            if not old.notice.isdisjoint(rels):
                return None
            try:
                if all(map(operator.is_, map(_WANT_OF, written), map(self.wanted.get, rels))):
                    return written
            except AttributeError:   # a path not written last time
                pass
            return None
        try:
            if all(map(operator.is_, map(old.seen.get, rels), map(_KEY_OF, written))) and all(
                    map(operator.is_, map(_WANT_OF, written), map(self.wanted.get, rels))):
                return written
        except AttributeError:   # a path not written last time
            pass
        return None

    def _keep(self, fd: int, prefix: str, rels: list[str], written: list[Written],
              subdirs: list[str], old: Manifest) -> None:
        """A directory judged in bulk: its files kept as written, its subdirectories walked."""
        self.done.update(zip(rels, written, strict=True))
        for name in subdirs:
            rel = prefix + name
            sub = self.fds[rel] = os.open(name, _DIR_FLAGS, dir_fd=fd)
            self._opened(rel, sub)
            self._walk(sub, rel + "/", old)

    def _record(self, rel: str, w: Written) -> None:
        self.done[rel] = w
        self.fresh.append(rel)

    def _opened(self, rel: str, fd: int) -> None:
        """A directory just opened: its key noted (as found), its mode put back if changed."""
        st = os.fstat(fd)
        self.found[rel] = _DIR_KEY(st)
        self._fix_mode(fd, st)

    def _fix_mode(self, fd: int, st: os.stat_result) -> None:
        if stat.S_IMODE(st.st_mode) != self.dir_mode:
            os.fchmod(fd, self.dir_mode)

    @staticmethod
    def _verify(fd: int, name: str, want: Want, st: os.stat_result) -> bool:
        """A racy entry: are its bytes (a link: its target) the wanted blob, unchanged since
        the lstat that found it?"""
        if want.how == "link":
            return stat.S_ISLNK(st.st_mode) and os.readlink(name, dir_fd=fd) == want.target
        if not stat.S_ISREG(st.st_mode):
            return False
        h = hashlib.sha1(b"blob %d\0" % st.st_size)
        f = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            while chunk := os.read(f, STREAM_BYTES):
                h.update(chunk)
            after = os.fstat(f)
        finally:
            os.close(f)
        return h.hexdigest() == want.oid and _key(after) == _key(st)

    # -- what is missing ------------------------------------------------------------------------
    def _dir(self, rel: str) -> int:
        """The open descriptor of directory rel, made when missing (never through a link)."""
        fd = self.fds.get(rel)
        if fd is not None:
            return fd
        parent_rel, _, name = rel.rpartition("/")
        parent = self._dir(parent_rel)
        try:
            os.mkdir(name, 0o777, dir_fd=parent)
        except FileExistsError:
            pass   # the walk kept it, or another entry made it
        fd = self.fds[rel] = os.open(name, _DIR_FLAGS, dir_fd=parent)
        self._opened(rel, fd)
        return fd

    def _write_missing(self) -> None:
        by_oid: dict[str, list[str]] = {}
        if len(self.done) == len(self.wanted):   # done holds only wanted paths: all there
            return
        for path in self.wanted.keys() - self.done.keys():
            want = self.wanted[path]
            parent_rel, _, name = path.rpartition("/")
            parent = self._dir(parent_rel)
            if want.how == "link":
                os.symlink(want.target, name, dir_fd=parent)
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                self._record(path, Written(want, _key(st)))
            else:
                by_oid.setdefault(want.oid, []).append(path)
        if by_oid:
            self.blobs(list(by_oid), lambda oid, size, stream: self._write_blob(
                by_oid[oid], size, stream))

    def _write_blob(self, paths: list[str], size: int, stream: BinaryIO) -> None:
        """One blob from stream into every path that holds it."""
        small = stream.read(size) if size <= STREAM_BYTES else None
        first: str | None = None
        for path in paths:
            parent_rel, _, name = path.rpartition("/")
            parent = self._dir(parent_rel)
            want = self.wanted[path]
            fd = os.open(name, _NEW_FILE, 0o666, dir_fd=parent)
            try:
                if want.how == "exec":
                    os.fchmod(fd, 0o755)
                if small is not None:
                    _write_all(fd, small)
                elif first is None:
                    _copy(stream, fd, size)
                else:
                    self._copy_from(first, fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            first = first or path
            self._record(path, Written(want, _key(st)))

    def _copy_from(self, path: str, out: int) -> None:
        parent_rel, _, name = path.rpartition("/")
        src = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir(parent_rel))
        try:
            while chunk := os.read(src, STREAM_BYTES):
                _write_all(out, chunk)
        finally:
            os.close(src)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _copy(stream: BinaryIO, fd: int, size: int) -> None:
    left = size
    while left:
        chunk = stream.read(min(STREAM_BYTES, left))
        if not chunk:
            raise OSError(f"the blob stream ended {left} bytes early")
        _write_all(fd, chunk)
        left -= len(chunk)


def _remove(fd: int, name: str, is_dir: bool) -> None:
    """Remove an entry of the directory fd (a directory with all it holds), following no link."""
    if not is_dir:
        os.unlink(name, dir_fd=fd)
        return
    sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
    try:
        with os.scandir(sub) as listing:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in listing]
        for child, child_is_dir in children:
            _remove(sub, child, child_is_dir)
    finally:
        os.close(sub)
    os.rmdir(name, dir_fd=fd)


def _tick(marker: Path | None) -> int:
    """The filesystem clock now, read as the ctime of a freshly made marker (-1: no marker)."""
    if marker is None:
        return -1
    with_name = os.fspath(marker)
    try:
        os.unlink(with_name)
    except FileNotFoundError:
        pass
    fd = os.open(with_name, _NEW_FILE, 0o600)
    try:
        return _coarse(os.fstat(fd).st_ctime_ns)
    finally:
        os.close(fd)
