"""The kernel's notice of what changed in a slot's worktree (Linux inotify, by inotify_simple).

A check that looks at every tracked file costs one lstat per file per experiment: on a
5,000-file repository that alone is more than a whole experiment on a small one. Git faces the
same problem for `git status` and answers it with a file-system monitor; this is ours. The
ratchet keeps one `TreeWatch` per worktree: after each checkout it arms a watch on every file
and directory the checkout wrote, and then asks it, after the run step and at the next
checkout, which paths something may have changed since. Only those are looked at again.

Why it misses nothing that the stat check would have seen:
- every tracked file's inode is watched itself, not only through its directory, so a change
  made through another name (a hard link made elsewhere) is reported too; a watch reports
  every open (IN_OPEN), writes and truncation (IN_MODIFY), metadata, link count and timestamps
  (IN_ATTRIB), the last close of a descriptor opened for writing (IN_CLOSE_WRITE) and the
  inode's deletion or move. The open is what makes writes that raise no event of their own
  visible: through a shared mapping, by Linux AIO, or from a descriptor whose last close is
  put off (parked in a unix socket in flight, say, until the kernel's socket garbage collector
  runs). Each needs the file opened during the step, and the open is queued when it happens,
  so the file is named and its key (mtime and ctime move with such writes) compared. A file the
  step only reads is named too: an lstat more, no hash unless its key changed;
- every tracked directory is watched for names created, deleted or moved in it, so a file
  replaced by another (rename over it, unlink and create) names its path, and a directory
  deleted, moved or replaced marks every path under it;
- a watch is armed before the file's key is compared with the one the checkout recorded, so a
  change between the write and the watch is seen by that comparison, and any later one by the
  watch;
- an event lost (the kernel's queue overflowed), a watch that could not be added (the user's
  watch limit), or any error reading the queue makes `changed()` answer None: "unknown", and
  the callers fall back to the lstat of every file.

The events of a step are all in the queue once its processes are dead (they are queued when
the file system operation happens), which is when the check after the run step asks.

What it does not see: a process that escaped its step's kill and still holds a writable
mapping of a tracked file can write through it later with no event until it unmaps (where a
stat would show the new mtime). Under the sandbox no process outlives its step (its PID
namespace); without it, such a process could as well forge the ledger (README: "With
`sandbox = false`", what does not hold).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Iterable, Mapping
from typing import Any

try:   # Linux only; elsewhere every check looks at every file
    from inotify_simple import INotify
    from inotify_simple import flags as _f
except ImportError:  # pragma: no cover - not Linux, or the package is missing
    INotify = None   # type: ignore[assignment,misc]

DISABLE_ENV = "AUTORESEARCH_NO_TREEWATCH"   # set: every check looks at every file (benchmarks)

if INotify is not None:
    FILE_EVENTS = (_f.OPEN | _f.MODIFY | _f.ATTRIB | _f.CLOSE_WRITE | _f.DELETE_SELF
                   | _f.MOVE_SELF | _f.DONT_FOLLOW)
    DIR_EVENTS = (_f.CREATE | _f.DELETE | _f.MOVED_FROM | _f.MOVED_TO | _f.DELETE_SELF
                  | _f.MOVE_SELF | _f.ONLYDIR | _f.DONT_FOLLOW)
    _IGNORED, _OVERFLOW, _ISDIR = int(_f.IGNORED), int(_f.Q_OVERFLOW), int(_f.ISDIR)
    _SELF = int(_f.DELETE_SELF | _f.MOVE_SELF | _f.IGNORED)


def available() -> bool:
    """Can this process watch a tree (Linux, inotify_simple installed, an instance to spare)?
    Probed once."""
    global _USABLE
    if _USABLE is None:
        _USABLE = False
        if INotify is not None:
            try:
                INotify().close()
                _USABLE = True
            except OSError:
                pass
    return _USABLE


_USABLE: bool | None = None


def open_watch(root: str) -> TreeWatch | None:
    """A watch on root, or None where inotify is missing or refused (the instance limit)."""
    if INotify is None or os.environ.get(DISABLE_ENV):
        return None
    try:
        return TreeWatch(root)
    except OSError:
        return None


class TreeWatch:
    """Watches on one worktree's files and directories; paths are relative to its root.

    The ratchet's use, per checkout: `take` (what may have changed since the last checkout:
    the checkout looks at those again, and trusts its own record of the rest), the checkout
    itself, then `rearm` (watch what it wrote). After the run step, `peek` (what may have
    changed since). Not thread-safe: one slot's thread uses it, the ratchet's rule for a
    worktree."""

    def __init__(self, root: str):
        assert INotify is not None
        self.root = root.rstrip("/")
        self._ino = INotify(nonblocking=True)
        self._where: dict[int, tuple[str, bool]] = {}   # wd -> (path, is a directory)
        self._file_wd: dict[str, int] = {}
        self._dir_wd: dict[str, tuple[int, int]] = {}   # path -> (wd, the inode armed)
        self._dirty: set[str] = set()
        self._subtrees: set[str] = set()   # directories deleted, moved or replaced
        self.lost = False                    # something went unseen: take/peek answer None
        self.refused = False                 # a watch could not be added (max_user_watches)

    def close(self) -> None:
        self._ino.close()

    def refresh(self) -> None:
        """Take the queued events in now (an overflow shows as `lost`)."""
        self._poll()

    # -- what changed -----------------------------------------------------------------------
    def peek(self, paths: Collection[str]) -> set[str] | None:
        """Which of `paths` something may have changed since they were armed (None: unknown)."""
        self._poll()
        if self.lost:
            return None
        out = {p for p in self._dirty if p in paths}
        if self._subtrees:
            prefixes = tuple(d + "/" if d else "" for d in self._subtrees)
            out.update(p for p in paths if p.startswith(prefixes))
        return out

    def take(self, paths: Collection[str]) -> set[str] | None:
        """peek, and forget it: the caller looks at each of those paths itself now."""
        out = self.peek(paths)
        self._dirty.clear()
        self._subtrees.clear()
        return out

    # -- arming -----------------------------------------------------------------------------
    def rearm(self, files: Mapping[str, Any], fresh: Iterable[str],
              dirs: dict[str, tuple[int, ...]], key_now: Callable[[str], tuple[int, ...]],
              racy: Iterable[str] = ()) -> None:
        """After a checkout that left `files` (path -> what it wrote, whose `.key` is the lstat
        key it recorded then; checkout.Written) and `dirs`
        (path -> key, "" the root), having written or looked at `fresh` since `take`: watch
        each directory on the inode it has now, and each fresh file, whose key is then compared
        with the recorded one (`key_now(absolute path)`). Events its own writes caused are
        absorbed that way; any other change since `take` stays marked. `racy` files stay
        marked too: written within the file system's timestamp tick, their key could not show
        a rewrite made before the watch was armed, so the next look at them reads their bytes
        (checkout.py's racy rule). The caller has taken in the events queued by the checkout
        (`refresh`), so that its own writes are read before the watches they concern."""
        fresh = list(fresh)
        for rel, key in dirs.items():
            armed = self._dir_wd.get(rel)
            if armed is None or armed[1] != key[3]:
                self._add(rel, True, key[3])
        for rel in fresh:
            self._add(rel, False, 0)
            try:
                same = key_now(self._abs(rel)) == files[rel].key
            except OSError:
                same = False
            if same:
                self._dirty.discard(rel)
            else:
                self._dirty.add(rel)
        if self._subtrees:   # a directory replaced since take: what the checkout kept in it
            prefixes = tuple(d + "/" if d else "" for d in self._subtrees)
            done = set(fresh)
            self._dirty.update(p for p in files if p.startswith(prefixes) and p not in done)
            self._subtrees.clear()
        self._dirty.intersection_update(files)   # names no longer wanted are not watched
        self._dirty.update(racy)

    def _add(self, rel: str, is_dir: bool, inode: int) -> None:
        try:
            wd = self._ino.add_watch(self._abs(rel), DIR_EVENTS if is_dir else FILE_EVENTS)
        except (OSError, ValueError):
            self.lost = self.refused = True   # the watch limit, or the path is gone
            return
        old = self._dir_wd.get(rel, (None,))[0] if is_dir else self._file_wd.get(rel)
        # the path's earlier inode is no longer this path's: its watch goes, unless another
        # path's re-arming took it over already (two directories swapped)
        if old is not None and old != wd and self._where.get(old, (rel,))[0] == rel:
            self._where.pop(old, None)
            try:
                self._ino.rm_watch(old)
            except OSError:
                pass
        if is_dir:
            self._dir_wd[rel] = (wd, inode)
        else:
            self._file_wd[rel] = wd
        self._where[wd] = (rel, is_dir)

    def _abs(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def _poll(self) -> None:
        """Take the queued events in (without waiting)."""
        try:
            events = self._ino.read(timeout=0)
        except (OSError, ValueError):   # ValueError: closed (the ratchet was closed)
            self.lost = True
            return
        where, dirty = self._where, self._dirty
        for wd, mask, _cookie, name in events:
            if mask & _OVERFLOW:
                self.lost = True
                continue
            at = where.get(wd)
            if at is None:
                continue   # a watch removed since, on an inode no longer at any tracked path
            rel, is_dir = at
            if not is_dir:
                dirty.add(rel)
            elif name:
                child = f"{rel}/{name}" if rel else name
                dirty.add(child)
                if mask & _ISDIR and child in self._dir_wd:
                    self._subtrees.add(child)
            elif mask & _SELF:
                self._subtrees.add(rel)
            if mask & _IGNORED:   # the inode is gone, or its watch was removed
                del where[wd]
                if is_dir:
                    if self._dir_wd.get(rel, (None,))[0] == wd:
                        del self._dir_wd[rel]
                elif self._file_wd.get(rel) == wd:
                    del self._file_wd[rel]
