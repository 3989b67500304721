"""The git ratchet: the only module that runs git.

Experiments never touch the user's checkout. A proposal becomes a commit built with plumbing
(a temporary index, `write-tree`, `commit-tree`), every experiment's commit is pinned under
`refs/autoresearch/TAG/NNNNN` whatever its fate, and keeping one moves the branch
`autoresearch/TAG` with a compare-and-swap `update-ref`. Evaluations run in worktrees under
`.autoresearch/worktrees/`.

Git never trusts a place a step can write. Every call names the repository's git directory as
recorded when the Ratchet was made (`--git-dir`), never a worktree's `.git`; hooks, the
attributes file, fsmonitor and system config are switched off. A worktree is not a git worktree:
it is a plain directory that `checkout` makes exactly the commit from the object store, writing
each blob's bytes itself (`cat-file --batch`, streamed), so no filter, attribute or hook from the
tree or from a step's leftovers ever runs; it rewrites only what differs from what the previous
checkout there wrote and removes everything else (checkout.py states the rules that keep a
file). `archive` builds its tar the same way.

With pygit2 installed (`pip install 'autoresearch[git]'`) the hot path runs no git process at
all: a proposal's blobs, trees and commit are written into the object store in-process, and
checkouts list their trees through libgit2 (their bytes still come from the long-lived
`cat-file`, which reads a pack several times faster than libgit2 does blob by blob). The objects are byte-for-byte those the
plumbing would write (the same commit id for the same dates). Without pygit2, when libgit2
cannot open the repository, or with AUTORESEARCH_GIT_PLUMBING=1, the same work runs through git
plumbing; refs always move through git's `update-ref` transactions.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import subprocess
import tarfile
import tempfile
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from .checkout import Manifest, Want, dirs_of, plan, sync
from .config import RESULTS_NAME, STATE_DIR
from .errors import GitError
from .lockcheck import PROCESS_HASHES, FileHashes, stat_key
from .treewatch import TreeWatch, open_watch

try:   # optional (autoresearch[git]): commits and checkouts without a git process
    import pygit2
except ImportError:   # pragma: no cover - the plumbing path below is the fallback
    pygit2 = None

_IDENTITY = ["-c", "user.name=autoresearch", "-c", "user.email=autoresearch@localhost",
             "-c", "commit.gpgsign=false", "-c", "core.hooksPath=/dev/null",
             "-c", "core.attributesFile=/dev/null", "-c", "core.fsmonitor=false",
             "-c", "diff.external=", "-c", "core.pager=cat"]
# no system-wide config or attributes, and no prompt for credentials
_SAFE_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_ATTR_NOSYSTEM": "1", "GIT_TERMINAL_PROMPT": "0"}
_BLOB_BATCH = 256          # blobs per cat-file call when materialising a tree
_TREE_CACHE_ROWS = 100_000   # files listed in the cache of commits' file lists, at most
_SUBTREE_ROWS = 100_000      # files listed in the cache of subtrees' listings, at most
_LISTINGS = 4                # commits whose planned checkout is kept (a slot's, the next ones)
_BLOB_MODES = ("100644", "100755", "120000")
PLUMBING_ENV = "AUTORESEARCH_GIT_PLUMBING"   # "1": never use libgit2 (tests, benchmarks)
# libgit2's memory, bounded for a driver that runs for days (its defaults suit short commands):
# parsed commits and trees are cached up to 256 MiB (a run adds ~1.4 KB per experiment and
# looks up only the few recent ones again), and pack files are mapped in 1 GiB windows, up to
# 8 GiB, whose touched pages all count in the driver's RSS.
_LIBGIT2_CACHE = 2**20             # bytes of parsed objects kept, at most (~3x that in RAM)
_LIBGIT2_WINDOW = 8 * 2**20        # bytes of a pack file mapped at once
_LIBGIT2_MAPPED = 64 * 2**20       # bytes of pack files mapped in all, at most


def safe_git_env() -> dict[str, str]:
    """The harness's environment for git: no GIT_* variable inherited (they could point git at
    another repository or config), no system config or attributes, no credential prompt."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k in ("GIT_AUTHOR_DATE", "GIT_COMMITTER_DATE")}
    env.update(_SAFE_ENV)
    return env


def git_blob_hash(data: bytes) -> str:
    """The object id git gives a blob with these bytes (sha1 repositories)."""
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def inside_work_tree(path: Path) -> bool:
    """Is path inside a git working tree?"""
    try:
        return subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=path,
                              capture_output=True).returncode == 0
    except FileNotFoundError:
        raise GitError("git is not installed — install git and try again") from None


def commit_all(dest: Path, message: str) -> None:
    """Commit everything in dest (a new repository on branch main when it is not in one)."""
    def git(*a: str) -> None:
        p = subprocess.run(["git", *_IDENTITY, *a], cwd=dest, capture_output=True, text=True)
        if p.returncode != 0:
            raise GitError(f"git {a[0]} in {dest} failed: {p.stderr.strip() or p.returncode}")

    if not inside_work_tree(dest):
        git("init", "-q", "-b", "main")
    git("add", "-A", ".")
    git("commit", "-q", "-m", message)


def _bound_libgit2() -> None:
    """Set libgit2's process-wide memory limits (above) once, before a repository is opened;
    a limit someone has already set lower is left as it is."""
    global _libgit2_bounded
    if _libgit2_bounded:
        return
    _libgit2_bounded = True
    settings = pygit2.settings
    settings.cache_max_size(min(settings.cached_memory[1], _LIBGIT2_CACHE))
    settings.mwindow_size = min(settings.mwindow_size, _LIBGIT2_WINDOW)
    settings.mwindow_mapped_limit = min(settings.mwindow_mapped_limit, _LIBGIT2_MAPPED)


_libgit2_bounded = False


class _NeedsPlumbing(Exception):
    """A commit libgit2's tree builder should not attempt; git plumbing builds it instead."""


def _is_sha(rev: str) -> bool:
    return len(rev) == 40 and all(c in "0123456789abcdef" for c in rev)


def _signature(date_var: str) -> pygit2.Signature:
    """The harness's identity, dated now, or as date_var says when it is set in git's raw form
    ("SECONDS +HHMM", "@SECONDS +HHMM"); any other form of date is left to git (_NeedsPlumbing)."""
    if not (value := os.environ.get(date_var)):
        return pygit2.Signature("autoresearch", "autoresearch@localhost")
    raw = value.lstrip("@").split()
    if len(raw) != 2 or not raw[0].isdigit() or len(raw[1]) != 5 or raw[1][0] not in "+-" \
            or not raw[1][1:].isdigit():
        raise _NeedsPlumbing
    tz = int(raw[1][1:3]) * 60 + int(raw[1][3:])
    return pygit2.Signature("autoresearch", "autoresearch@localhost", int(raw[0]),
                            tz if raw[1][0] == "+" else -tz)


@dataclass(frozen=True)
class _Listing:
    """A commit's blobs as a checkout plans them; shared by its callers, never changed."""

    commit: str
    tree: str                            # its root tree's id (libgit2; "" under plumbing)
    rows: dict[str, tuple[str, str]]     # repo-relative path -> (git mode, blob id)
    wanted: dict[str, Want]
    dirs: frozenset[str]
    links: dict[str, str]                # target-relative path -> target, written as a link


@dataclass
class CommitResult:
    sha: str
    changed: list[str]   # target-relative paths that differ from the base ("../x" when outside)
    tree: str
    added: int = 0       # lines added and removed against the base
    removed: int = 0


def _lstat_key(path: str) -> tuple[int, ...]:
    return stat_key(os.lstat(path))


class Ratchet:
    def __init__(self, target_root: Path):
        self.target_root = Path(target_root).resolve()
        try:
            out = subprocess.run(["git", "rev-parse", "--show-toplevel", "--git-common-dir",
                                  "--absolute-git-dir"],
                                 cwd=self.target_root, capture_output=True, text=True)
        except FileNotFoundError:
            raise GitError("git is not installed — install git and try again") from None
        if out.returncode != 0:
            raise GitError(f"{self.target_root} is not inside a git repository — "
                           f"run 'git init' there and commit your files first")
        top, common, git_dir = out.stdout.splitlines()[:3]
        self.repo = Path(top).resolve()
        self.common_dir = (self.target_root / common).resolve()
        self.git_dir = Path(git_dir).resolve()   # recorded once: never re-read from a worktree
        rel = self.target_root.relative_to(self.repo).as_posix()
        self.subdir = "" if rel == "." else rel
        self.worktrees_dir = self.target_root / STATE_DIR / "worktrees"
        self._base_env = safe_git_env()
        self._init_helpers()

    def _init_helpers(self) -> None:
        """The caches and the long-lived git processes (each started on first use)."""
        self._tree_cache: dict[str, dict[str, str]] = {}
        self._tree_cache_rows = 0
        self._subtrees: dict[str, list[tuple[str, str, str]]] = {}   # subtree id -> its blobs
        self._subtree_rows = 0
        self._cat: subprocess.Popen | None = None   # `git cat-file --batch`
        self._cat_lock = threading.Lock()
        self._refs: subprocess.Popen | None = None  # `git update-ref --stdin`
        self._refs_lock = threading.Lock()
        self._lib: pygit2.Repository | None = None  # libgit2's view (None: plumbing)
        self._manifests: dict[str, Manifest] = {}   # worktree -> what its last checkout wrote
        self._watches: dict[str, TreeWatch] = {}    # worktree -> the kernel's notice of changes
        self._synced: dict[str, str] = {}           # worktree -> the commit last checked out
        self._unwatchable: set[str] = set()          # worktrees past the user's inotify limit
        self._manifests_lock = threading.Lock()
        self._listings: dict[str, _Listing] = {}   # full sha -> its planned checkout, oldest first
        self._listings_lock = threading.Lock()
        self.hashes: FileHashes = PROCESS_HASHES    # told what checkouts wrote (lockcheck)
        self._lib_lock = threading.Lock()
        if pygit2 is not None and os.environ.get(PLUMBING_ENV) != "1":
            _bound_libgit2()
            try:
                self._lib = pygit2.Repository(str(self.git_dir))
            except (pygit2.GitError, KeyError, ValueError, OSError):
                self._lib = None

    @property
    def in_process(self) -> bool:
        """Are commits and checkouts built in-process (libgit2) rather than by git plumbing?"""
        return self._lib is not None

    def _spawn(self, *args: str, text: bool, stderr: int) -> subprocess.Popen:
        """A long-lived git process in this repository, talked to through pipes."""
        return subprocess.Popen(["git", f"--git-dir={self.git_dir}", *_IDENTITY, *args],
                                cwd=self.repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, text=text, env=self._base_env)

    # -- plumbing ---------------------------------------------------------------------------
    def git(self, *args: str, cwd: Path | None = None, input: str | bytes | None = None,
            env: dict[str, str] | None = None, check: bool = True, binary: bool = False):
        full_env = {**self._base_env, **(env or {})}
        where = [f"--git-dir={self.git_dir}", f"--work-tree={cwd or self.repo}"]
        p = subprocess.run(["git", *where, *_IDENTITY, *args], cwd=cwd or self.repo, input=input,
                           capture_output=True, text=not binary, env=full_env)
        if check and p.returncode != 0:
            err = p.stderr if not binary else p.stderr.decode(errors="replace")
            raise GitError(f"git {' '.join(args[:3])} failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
        if not check:
            return p
        return p.stdout if binary else p.stdout.strip()

    def _repo_path(self, rel: str) -> str:
        return f"{self.subdir}/{rel}" if self.subdir else rel

    def _target_rel(self, repo_path: str) -> str:
        if not self.subdir:
            return repo_path
        prefix = self.subdir + "/"
        return repo_path[len(prefix):] if repo_path.startswith(prefix) else "../" + repo_path

    # -- setup ------------------------------------------------------------------------------
    def ensure_ignored(self) -> None:
        """Hide .autoresearch/ and results.tsv from git without the user editing anything."""
        exclude = self.common_dir / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        lines = exclude.read_text().splitlines() if exclude.exists() else []
        prefix = f"/{self.subdir}" if self.subdir else ""
        want = [f"{prefix}/{STATE_DIR}/", f"{prefix}/{RESULTS_NAME}", f"{prefix}/progress.png"]
        missing = [w for w in want if w not in lines]
        if missing:
            with exclude.open("a") as f:
                if lines and lines[-1] != "":
                    f.write("\n")
                f.write("# autoresearch\n" + "\n".join(missing) + "\n")

    def head(self) -> str:
        p = self.git("rev-parse", "--verify", "-q", "HEAD^{commit}", check=False)
        if p.returncode != 0:
            raise GitError(f"{self.repo} has no commits yet — commit your files first "
                           f"(git add -A && git commit -m baseline)")
        return p.stdout.strip()

    def resolve(self, rev: str) -> str | None:
        if self._lib is not None and (rev.startswith("refs/") or _is_sha(rev)):
            with self._lib_lock:
                try:
                    return str(self._lib.revparse_single(rev).peel(pygit2.Commit).id)
                except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
                    return None
        p = self.git("rev-parse", "--verify", "-q", f"{rev}^{{commit}}", check=False)
        return p.stdout.strip() if p.returncode == 0 else None

    # -- branches and refs ------------------------------------------------------------------
    @staticmethod
    def branch(tag: str) -> str:
        return f"refs/heads/autoresearch/{tag}"

    @staticmethod
    def exp_ref(tag: str, seq: int) -> str:
        return f"refs/autoresearch/{tag}/{seq:05d}"

    def branch_commit(self, tag: str) -> str | None:
        return self.resolve(self.branch(tag))

    def set_branch(self, tag: str, commit: str, expect: str | None = None) -> None:
        """Point autoresearch/TAG at commit; with `expect`, only if it still points there."""
        self.update_refs([(self.branch(tag), commit, expect)])

    def pin(self, tag: str, seq: int, commit: str) -> str:
        ref = self.exp_ref(tag, seq)
        self.update_refs([(ref, commit, None)])
        return ref

    def pin_many(self, tag: str, commits: dict[int, str]) -> None:
        """Pin several experiments in one transaction."""
        self.update_refs([(self.exp_ref(tag, seq), sha, None) for seq, sha in commits.items()])

    def update_refs(self, updates: list[tuple[str, str, str | None]]) -> None:
        """(ref, new, expected old or None) as one transaction of one long-lived
        `git update-ref --stdin`: all of them or none, and no process started per update."""
        lines = "".join(f"update {ref} {new}{' ' + old if old else ''}\n"
                        for ref, new, old in updates)
        with self._refs_lock:
            if self._refs is None or self._refs.poll() is not None:
                self._refs = self._spawn("update-ref", "-m", "autoresearch", "--stdin",
                                         text=True, stderr=subprocess.PIPE)
            proc = self._refs
            assert proc.stdin is not None and proc.stdout is not None
            try:
                proc.stdin.write(f"start\n{lines}commit\n")
                proc.stdin.flush()
                answers = [proc.stdout.readline(), proc.stdout.readline()]
            except OSError:
                answers = []
            if answers == ["start: ok\n", "commit: ok\n"]:
                return
            err = ""
            with contextlib.suppress(OSError, ValueError):
                proc.kill()
                err = proc.stderr.read() if proc.stderr else ""
            self._close_proc(proc)
            self._refs = None
            why = err.strip().splitlines()[-1] if err.strip() else "the update was refused"
            raise GitError(f"git update-ref failed: {why}")

    def pins(self, tag: str) -> dict[int, str]:
        """seq -> commit of every pinned experiment of a run."""
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", f"refs/autoresearch/{tag}/")
        pins = {}
        for line in out.splitlines():
            ref, sha = line.split()
            tail = ref.rsplit("/", 1)[-1]
            if tail.isdigit():
                pins[int(tail)] = sha
        return pins

    def current_branch(self, cwd: Path | None = None) -> str | None:
        p = self.git("symbolic-ref", "-q", "HEAD", cwd=cwd, check=False)
        return p.stdout.strip() if p.returncode == 0 else None

    # -- reading trees ----------------------------------------------------------------------
    def list_files(self, commit: str) -> dict[str, str]:
        """Target-relative path -> blob id of every file in the target at commit."""
        if len(commit) == 40 and commit in self._tree_cache:   # a full sha never changes
            return dict(self._tree_cache[commit])
        if self._lib is not None:
            files = {path: oid for path, _mode, oid in self._lib_rows(commit, False)}
            if len(commit) == 40:
                self._remember(commit, files)
            return files
        args = ["ls-tree", "-r", "-z", commit]
        if self.subdir:
            args += ["--", self.subdir]
        out = self.git(*args)
        files = {}
        for entry in out.split("\0"):
            if not entry:
                continue
            meta, path = entry.split("\t", 1)
            _mode, kind, oid = meta.split()
            if kind == "blob":
                files[self._target_rel(path)] = oid
        if len(commit) == 40:
            self._remember(commit, files)
        return files

    def _remember(self, commit: str, files: dict[str, str]) -> None:
        self._tree_cache_rows += len(files)
        if len(self._tree_cache) > 256 or self._tree_cache_rows > _TREE_CACHE_ROWS:
            self._tree_cache.clear()   # bounded in files too: a large tree costs megabytes
            self._tree_cache_rows = len(files)
        self._tree_cache[commit] = dict(files)

    def read_blobs(self, oids: Iterable[str]) -> dict[str, bytes]:
        """The bytes of these objects, through one long-lived `git cat-file --batch`."""
        oids = list(dict.fromkeys(oids))
        if not oids:
            return {}
        with self._cat_lock:
            for attempt in (1, 2):
                try:
                    return self._cat_file(oids)
                except (OSError, ValueError) as e:   # the process died: start another once
                    self._close_cat()
                    if attempt == 2:
                        raise GitError(f"git cat-file failed: {e}") from None
        raise AssertionError("unreachable")

    def _cat_proc(self) -> subprocess.Popen:
        """The long-lived `git cat-file --batch` (callers hold _cat_lock)."""
        if self._cat is None or self._cat.poll() is not None:
            self._cat = self._spawn("cat-file", "--batch", text=False, stderr=subprocess.DEVNULL)
        assert self._cat.stdin is not None and self._cat.stdout is not None
        return self._cat

    def _cat_file(self, oids: list[str]) -> dict[str, bytes]:
        proc = self._cat_proc()
        proc.stdin.write(("\n".join(oids) + "\n").encode())
        proc.stdin.flush()
        result = {}
        for oid in oids:
            header = proc.stdout.readline().split()
            if len(header) != 3:
                raise GitError(f"git cat-file: no object {oid} in {self.repo}")
            size = int(header[2])
            result[oid] = proc.stdout.read(size)
            proc.stdout.read(1)   # the newline after the contents
        return result

    def _close_cat(self) -> None:
        if self._cat is not None:
            self._close_proc(self._cat)
            self._cat = None

    @staticmethod
    def _close_proc(proc: subprocess.Popen) -> None:
        with contextlib.suppress(OSError):
            proc.kill()
        proc.wait()
        for fh in (proc.stdin, proc.stdout, proc.stderr):
            if fh is not None:
                with contextlib.suppress(OSError):
                    fh.close()

    def close(self) -> None:
        """End the long-lived git processes (they also end with this process) and the
        worktrees' watches."""
        with self._manifests_lock:
            watches = list(self._watches.values())
            self._watches.clear()
        for watch in watches:
            watch.close()
        with self._cat_lock:
            self._close_cat()
        with self._refs_lock:
            if self._refs is not None:
                self._close_proc(self._refs)
                self._refs = None

    def read_files(self, commit: str, paths: Iterable[str]) -> dict[str, str]:
        files = self.list_files(commit)
        wanted = {p: files[p] for p in paths if p in files}
        blobs = self.read_blobs(wanted.values())
        return {p: blobs[oid].decode("utf-8", errors="replace") for p, oid in wanted.items()}

    def tree_of(self, commit: str) -> str:
        return self.git("rev-parse", f"{commit}^{{tree}}")

    def parent_of(self, commit: str) -> str | None:
        return self.resolve(f"{commit}^")

    def diff(self, a: str, b: str) -> str:
        return self.git("diff", "--no-color", "--no-ext-diff", "--no-textconv", a, b,
                        *(["--relative=" + self.subdir] if self.subdir else []))

    def _numstat(self, a: str, b: str) -> tuple[list[str], int, int]:
        """(target-relative changed paths, lines added, lines removed) from a to b."""
        if self._lib is not None:
            with self._lib_lock:
                repo = self._lib
                diff = repo.diff(repo[a].peel(pygit2.Tree), repo[b].peel(pygit2.Tree))
                changed, added, removed = [], 0, 0
                for patch in diff:
                    delta = patch.delta
                    changed.append(self._target_rel(delta.new_file.path or delta.old_file.path))
                    if not delta.is_binary:   # binary files have no line counts, as in git
                        _ctx, plus, minus = patch.line_stats
                        added, removed = added + plus, removed + minus
                return changed, added, removed
        out = self.git("diff-tree", "-r", "--no-commit-id", "--numstat", "-z", a, b)
        changed, added, removed = [], 0, 0
        for entry in out.split("\0"):
            if not entry:
                continue
            x, y, path = entry.split("\t", 2)
            changed.append(self._target_rel(path))
            if x != "-":   # binary files have no line counts
                added, removed = added + int(x), removed + int(y)
        return changed, added, removed

    def changed_paths(self, a: str, b: str) -> list[str]:
        return self._numstat(a, b)[0]

    # -- making commits ---------------------------------------------------------------------
    def make_commit(self, base: str, message: str, files: dict[str, str | None] | None = None,
                    patch: str | None = None) -> CommitResult:
        """A commit on top of base with these whole files (None deletes) or this patch.

        Built in a temporary index (or in-process, see the module's docstring), so no working
        tree is touched. Raises GitError when the patch does not apply.
        """
        if files and not patch and self._lib is not None:
            with self._lib_lock:
                built = self._lib_commit(base, message, files)
            if built is not None:
                sha, tree, written = built
                return self._committed(base, sha, tree, written)
        written: dict[str, str | None] = {}   # target-relative path -> new blob (None: deleted)
        with tempfile.TemporaryDirectory(prefix="ar-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git("read-tree", base, env=env)
            if files:
                add_lines, removes = [], []
                for rel, content in files.items():
                    rp = self._repo_path(rel)
                    if content is None:
                        written[rel] = None
                        removes.append(rp)
                        continue
                    oid = self.git("hash-object", "-w", "--stdin", input=content)
                    written[rel] = oid
                    add_lines.append(f"100644 {oid}\t{rp}")
                if add_lines:
                    self.git("update-index", "--add", "--index-info",
                             input="\n".join(add_lines) + "\n", env=env)
                for rp in removes:
                    self.git("update-index", "--force-remove", "--", rp, env=env)
            if patch:
                self._apply_cached(patch, env)
            tree = self.git("write-tree", env=env)
        sha = self.git("commit-tree", tree, "-p", base, "-F", "-", input=message)
        return self._committed(base, sha, tree, written if files and not patch else None)

    def _committed(self, base: str, sha: str, tree: str,
                   written: dict[str, str | None] | None) -> CommitResult:
        """The result of a new commit; with `written`, its file list is known without ls-tree."""
        if written is not None and len(base) == 40:
            known = self.list_files(base)
            known.update({rel: oid for rel, oid in written.items() if oid is not None})
            for rel in [r for r, oid in written.items() if oid is None]:
                known.pop(rel, None)
            self._remember(sha, known)
        changed, added, removed = self._numstat(base, sha)
        return CommitResult(sha, changed, tree, added, removed)

    def commit_tree(self, tree: str, parent: str, message: str) -> str:
        """A new commit of an existing tree on top of parent (the kept version of a winner)."""
        if self._lib is not None and _is_sha(tree) and _is_sha(parent):
            with self._lib_lock, contextlib.suppress(_NeedsPlumbing):
                return self._lib_commit_tree(tree, parent, message)
        return self.git("commit-tree", tree, "-p", parent, "-F", "-", input=message)

    # -- in-process (libgit2): callers hold _lib_lock --------------------------------------------
    def _lib_commit_tree(self, tree: str, parent: str, message: str) -> str:
        author, committer = _signature("GIT_AUTHOR_DATE"), _signature("GIT_COMMITTER_DATE")
        oid = self._lib.create_commit(None, author, committer, message, pygit2.Oid(hex=tree),
                                      [pygit2.Oid(hex=parent)])
        return str(oid)

    def _lib_commit(self, base: str, message: str, files: dict[str, str | None]
                    ) -> tuple[str, str, dict[str, str | None]] | None:
        """(commit, tree, written) built in-process, or None when the plumbing must do it (a
        path that is a file in one tree and a directory in the other)."""
        repo = self._lib
        try:
            base_commit = repo.revparse_single(base).peel(pygit2.Commit)
        except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
            raise GitError(f"git read-tree failed: no commit {base} in {self.repo}") from None
        written: dict[str, str | None] = {}
        changes: dict[tuple[str, ...], pygit2.Oid | None] = {}
        for rel, content in files.items():
            parts = tuple(self._repo_path(rel).split("/"))
            if content is None:
                written[rel] = None
                changes[parts] = None
            else:
                oid = repo.create_blob(content.encode())
                written[rel] = str(oid)
                changes[parts] = oid
        try:
            tree = self._lib_tree(base_commit.tree, changes)
            if tree is None:
                tree = repo.TreeBuilder().write()   # everything deleted: the empty tree
            sha = self._lib_commit_tree(str(tree), str(base_commit.id), message)
        except _NeedsPlumbing:
            return None
        return sha, str(tree), written

    def _lib_tree(self, tree: pygit2.Tree | None,
                  changes: dict[tuple[str, ...], pygit2.Oid | None]) -> pygit2.Oid | None:
        """tree with these blobs set (None: removed) at these paths, written; None when the
        result is empty (git writes no empty directory)."""
        repo = self._lib
        builder = repo.TreeBuilder(tree) if tree is not None else repo.TreeBuilder()
        below: dict[str, dict[tuple[str, ...], pygit2.Oid | None]] = {}
        for parts, oid in changes.items():
            if len(parts) > 1:
                below.setdefault(parts[0], {})[parts[1:]] = oid
                continue
            entry = builder.get(parts[0])
            if entry is not None and entry.type_str == "tree":
                raise _NeedsPlumbing
            if oid is None:
                if entry is not None:
                    builder.remove(parts[0])
            else:
                builder.insert(parts[0], oid, pygit2.enums.FileMode.BLOB)
        for name, sub in below.items():
            entry = builder.get(name)
            if entry is not None and entry.type_str != "tree":
                raise _NeedsPlumbing
            if entry is None and all(v is None for v in sub.values()):
                continue   # removing under a directory that does not exist
            new = self._lib_tree(repo[entry.id] if entry is not None else None, sub)
            if new is None:
                builder.remove(name)
            else:
                builder.insert(name, new, pygit2.enums.FileMode.TREE)
        return builder.write() if len(builder) else None

    def _apply_cached(self, patch: str, env: dict[str, str]) -> None:
        if not patch.endswith("\n"):
            patch += "\n"
        errors = []
        for strip in ("1", "0"):
            args = ["apply", "--cached", "--whitespace=nowarn", "--recount", f"-p{strip}"]
            if self.subdir:
                args.append(f"--directory={self.subdir}")
            p = self.git(*args, "-", input=patch, env=env, check=False)
            if p.returncode == 0:
                return
            errors.append(p.stderr.strip().splitlines()[-1] if p.stderr.strip() else "failed")
        raise GitError(f"the patch does not apply: {errors[0]}")

    def merge_onto(self, commit: str, old_base: str, new_base: str, message: str) -> str | None:
        """Replay commit's change (against old_base) onto new_base; None on conflict."""
        p = self.git("merge-tree", "--write-tree", "--no-messages", f"--merge-base={old_base}",
                     new_base, commit, check=False)
        if p.returncode == 0:
            tree = p.stdout.split()[0]
        elif p.returncode == 1:
            return None  # conflict
        else:  # git < 2.40 has no --merge-base: apply the change as a patch instead
            tree = self._replay_diff(commit, old_base, new_base)
            if tree is None:
                return None
        return self.git("commit-tree", tree, "-p", new_base, "-F", "-", input=message)

    def _replay_diff(self, commit: str, old_base: str, new_base: str) -> str | None:
        diff = self.git("diff", "--binary", "--full-index", "--no-color", "--no-ext-diff",
                        "--no-textconv", old_base, commit, binary=True)
        with tempfile.TemporaryDirectory(prefix="ar-index-") as tmp:
            env = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
            self.git("read-tree", new_base, env=env)
            if diff:
                # --3way: a change next to (not on) the new base's lines still merges, as
                # merge-tree would; overlapping changes still fail
                p = self.git("apply", "--cached", "--3way", "-", input=diff, env=env, check=False,
                             binary=True)
                if p.returncode != 0:
                    return None
            return self.git("write-tree", env=env)

    def archive(self, commit: str) -> bytes:
        """The target's files at commit as a tar, for executors on other machines (built from
        the blobs: no export-subst, no filters)."""
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for rel, mode, data in self._entries(commit, whole_repo=False):
                info = tarfile.TarInfo(rel)
                if mode == "120000":
                    info.type, info.linkname = tarfile.SYMTYPE, data.decode(errors="replace")
                    tar.addfile(info)
                    continue
                info.size, info.mode = len(data), 0o755 if mode == "100755" else 0o644
                tar.addfile(info, io.BytesIO(data))
        return buf.getvalue()

    def _entries(self, commit: str, whole_repo: bool):
        """(path, mode, bytes) of every blob at commit: repo-relative when whole_repo, else
        target-relative within the target's directory."""
        rows = self._blob_rows(commit, whole_repo)
        for i in range(0, len(rows), _BLOB_BATCH):
            chunk = rows[i:i + _BLOB_BATCH]
            blobs = self.read_blobs(oid for _p, _m, oid in chunk)
            for path, mode, oid in chunk:
                yield path, mode, blobs[oid]

    def _blob_rows(self, commit: str, whole_repo: bool) -> list[tuple[str, str, str]]:
        """(path, mode, blob id) of every blob at commit, as `_entries` names them."""
        if self._lib is not None:   # the listing in-process; the bytes from the long-lived
            # cat-file, which reads a pack several times faster than libgit2 does blob by blob
            return self._lib_rows(commit, whole_repo)
        args = ["ls-tree", "-r", "-z", "--full-tree", commit]
        if self.subdir and not whole_repo:
            args += ["--", self.subdir]
        rows = []
        for entry in self.git(*args).split("\0"):
            if not entry:
                continue
            meta, path = entry.split("\t", 1)
            mode, kind, oid = meta.split()
            if kind == "blob":
                rows.append((path if whole_repo else self._target_rel(path), mode, oid))
        return rows

    def _stream_blobs(self, oids: list[str],
                      sink: Callable[[str, int, BinaryIO], None]) -> None:
        """sink(oid, size, stream) for each object, through the long-lived cat-file; the sink
        reads exactly size bytes from stream, so a large blob need never be held whole."""
        with self._cat_lock:
            for i in range(0, len(oids), _BLOB_BATCH):   # the requests fit in the pipe
                chunk = oids[i:i + _BLOB_BATCH]
                try:
                    proc = self._cat_proc()
                    proc.stdin.write(("\n".join(chunk) + "\n").encode())
                    proc.stdin.flush()
                    for oid in chunk:
                        header = proc.stdout.readline().split()
                        if len(header) != 3:
                            raise GitError(f"git cat-file: no object {oid} in {self.repo}")
                        sink(oid, int(header[2]), proc.stdout)
                        proc.stdout.read(1)   # the newline after the contents
                except BaseException:
                    self._close_cat()   # mid-object: the stream's place is lost
                    raise

    def _lib_rows(self, commit: str, whole_repo: bool) -> list[tuple[str, str, str]]:
        """(path, mode, blob id) of every blob at commit, as `ls-tree -r` lists them. Each
        subtree's listing is kept by its id, so a commit that changes one file lists only the
        trees on that file's path again."""
        with self._lib_lock:
            try:
                root = self._lib.revparse_single(commit).peel(pygit2.Tree)
            except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
                raise GitError(f"git ls-tree failed: no commit {commit} in {self.repo}") from None
            rows = self._lib_tree_rows(root, cache=False)
        if self.subdir and not whole_repo:
            rows = [(self._target_rel(p), m, o) for p, m, o in rows
                    if p.startswith(self.subdir + "/")]
        return rows

    def _lib_tree_rows(self, tree: pygit2.Tree, cache: bool = True) -> list[tuple[str, str, str]]:
        """The blobs under tree, tree-relative (callers hold _lib_lock)."""
        key = str(tree.id)
        if (hit := self._subtrees.get(key)) is not None:
            return hit
        rows: list[tuple[str, str, str]] = []
        for entry in tree:
            if entry.type_str == "tree":
                prefix = entry.name + "/"
                rows += [(prefix + p, m, o) for p, m, o in self._lib_tree_rows(self._lib[entry.id])]
            elif entry.type_str == "blob":
                rows.append((entry.name, f"{entry.filemode:06o}", str(entry.id)))
        if cache:
            self._subtree_rows += len(rows)
            if self._subtree_rows > _SUBTREE_ROWS:
                self._subtrees.clear()
                self._subtree_rows = len(rows)
            self._subtrees[key] = rows
        return rows

    # -- worktrees --------------------------------------------------------------------------
    def worktree(self, name: str) -> Path:
        """A plain directory .autoresearch/worktrees/NAME for checkouts (created once)."""
        path = self.worktrees_dir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkout(self, worktree: Path, commit: str) -> Path:
        """Make the worktree exactly commit, from the object store, rewriting only what differs
        from what the last checkout there wrote (checkout.py: whatever a step left, a `.git`
        file included, is removed; a file is kept only on an unchanged, settled stat key);
        returns the target dir. The files it wrote or checked again, settled, are told to
        `hashes`, so the locked-file check does not read them again (those it kept were told
        when written). Keys handed over by `checked` since the last checkout there spare it the
        lstat of each file (checkout.py says when that is sound)."""
        listing = self._listing(commit)
        name = os.path.abspath(worktree)
        with self._manifests_lock:
            old = self._manifests.pop(name, None)
            watch = self._watches.pop(name, None)
        if old is not None and watch is not None and \
                (changed := watch.take(old.files)) is not None:
            old.notice = changed   # every file it does not name is as written
        marker = Path(os.path.dirname(name)) / f".{os.path.basename(name)}.tick"
        manifest = sync(Path(name), listing.wanted, self._stream_blobs, old, marker, listing.dirs)
        files = manifest.files
        self.hashes.vouch_many(name, ((rel, w.key, w.oid) for rel in manifest.fresh
                                      if (w := files[rel]).how != "link" and manifest.settled(w)))
        if watch is not None:
            watch.refresh()
            if watch.lost or manifest.rebuilt:
                watch.close()   # something went unseen, or every inode is new: start again
                watch = None
        fresh: Iterable[str] = manifest.fresh
        if watch is None and name not in self._unwatchable and \
                (watch := open_watch(name)) is not None:
            fresh = files
        if watch is not None:
            watch.rearm(files, fresh, manifest.dir_keys, _lstat_key,
                        racy=[rel for rel in fresh if not manifest.settled(files[rel])])
            if watch.refused and fresh is files:   # the user's watch limit: no notice here
                self._unwatchable.add(name)
                watch.close()
                watch = None
        manifest.fresh = []
        with self._manifests_lock:
            self._manifests[name] = manifest
            self._synced[name] = commit
            if watch is not None:
                self._watches[name] = watch
        return Path(worktree) / self.subdir if self.subdir else Path(worktree)

    def touched(self, worktree: Path, commit: str) -> set[str] | None:
        """The target-relative paths that the checks after a step must look at again: those
        the kernel's notice names as possibly changed since the worktree's last checkout, if
        that checkout made it `commit` (treewatch.py). Every other file of the commit is as the
        checkout wrote it. None: look at every one (no notice here, an event lost, or the
        worktree's last checkout was of another commit)."""
        name = os.path.abspath(worktree)
        with self._manifests_lock:
            watch, manifest = self._watches.get(name), self._manifests.get(name)
            synced = self._synced.get(name)
        if watch is None or manifest is None or synced != commit or \
                (got := watch.peek(manifest.files)) is None:
            return None
        if not self.subdir:
            return got
        prefix = self.subdir + "/"
        return {p[len(prefix):] for p in got if p.startswith(prefix)}

    def checked(self, worktree: Path, keys: dict[str, tuple[int, ...]]) -> None:
        """lstat keys (target-relative path -> lockcheck.stat_key) of files in the worktree,
        taken after its last checkout with nothing able to write there running since (the
        locked/tracked check after a run step: evaluation.evaluate's `checked`). The next
        checkout of the worktree judges those files on them instead of an lstat of its own.
        Only the thread that made the worktree's last checkout may call it."""
        name = os.path.abspath(worktree)
        if self.subdir:
            prefix = self.subdir + "/"
            keys = {prefix + rel: key for rel, key in keys.items()}
        with self._manifests_lock:
            if (manifest := self._manifests.get(name)) is not None:
                manifest.seen = keys

    def materialize(self, commit: str, dest: Path) -> Path:
        """Write the repository's files at commit into dest (emptied first); returns the
        target's directory in it. Blob bytes are written as stored: no filter, no attribute,
        no hook runs. A symlink that resolves outside the tree is written as a regular file."""
        with self._manifests_lock:
            self._manifests.pop(os.path.abspath(dest), None)
            self._synced.pop(os.path.abspath(dest), None)
            watch = self._watches.pop(os.path.abspath(dest), None)
        if watch is not None:
            watch.close()
        listing = self._listing(commit)
        sync(Path(dest), listing.wanted, self._stream_blobs, None, None, listing.dirs)
        return Path(dest) / self.subdir if self.subdir else Path(dest)

    def links(self, commit: str) -> dict[str, str]:
        """Target-relative path -> target of the commit's symlinks that a checkout writes as
        symlinks (those that resolve inside the tree); the others become regular files."""
        return dict(self._listing(commit).links)

    # -- planned checkouts: a commit's listing, made from the last one by a tree diff ---------
    def _listing(self, commit: str) -> _Listing:
        """The commit's blobs planned for a checkout: cached by full sha; else made from the
        last listing and the difference of the two trees (only subtrees whose ids differ are
        read: a commit that changes one file costs a copy of the listing, not a walk of the
        tree), else listed whole."""
        full = _is_sha(commit)
        with self._listings_lock:
            if full and (hit := self._listings.get(commit)) is not None:
                return hit
            base = self._listings[next(reversed(self._listings))] if self._listings else None
        listing = None
        if full and base is not None:
            tree, changes = self._tree_changes(base, commit)
            listing = self._applied(base, commit, tree, changes)
        if listing is None:
            tree = self._lib_tree_id(commit) if self._lib is not None else ""
            rows = {p: (m, o) for p, m, o in self._blob_rows(commit, whole_repo=True)}
            wanted = {p: Want("exec" if m == "100755" else "file", o)
                      for p, (m, o) in rows.items() if m != "120000"}
            listing = self._with_links(commit, tree, rows, wanted, dirs_of(rows))
        if full:
            with self._listings_lock:
                self._listings.pop(commit, None)
                self._listings[commit] = listing
                while len(self._listings) > _LISTINGS:
                    self._listings.pop(next(iter(self._listings)))
        return listing

    def _applied(self, base: _Listing, commit: str, tree: str,
                 changes: list[tuple[str, str | None, str | None]]) -> _Listing:
        """base with (path, mode, blob id) changes applied (mode None: removed)."""
        rows, wanted = dict(base.rows), dict(base.wanted)
        links = False   # a link among the changes
        for path, mode, oid in changes:
            before = rows.pop(path, None)
            links |= before is not None and before[0] == "120000"
            wanted.pop(path, None)
            if mode is None or oid is None:
                continue
            rows[path] = (mode, oid)
            if mode == "120000":
                links = True
            else:
                wanted[path] = Want("exec" if mode == "100755" else "file", oid)
        moved = any((p in rows) != (p in base.rows) for p, _m, _o in changes)
        dirs = dirs_of(rows) if moved else base.dirs
        if not links:   # no link changed: how each is written still holds
            return _Listing(commit, tree, rows, wanted, dirs, base.links)
        return self._with_links(commit, tree, rows, wanted, dirs)

    def _with_links(self, commit: str, tree: str, rows: dict[str, tuple[str, str]],
                    wanted: dict[str, Want], dirs: frozenset[str]) -> _Listing:
        """The listing, its links planned (each judged by the commit's own paths and links)."""
        link_rows = [(p, m, o) for p, (m, o) in rows.items() if m == "120000"]
        planned = plan(link_rows, self.read_blobs(o for _p, _m, o in link_rows))
        wanted.update(planned)
        prefix = self.subdir + "/" if self.subdir else ""
        links = {p[len(prefix):]: w.target for p, w in planned.items()
                 if w.how == "link" and w.target is not None and p.startswith(prefix)}
        return _Listing(commit, tree, rows, wanted, dirs, links)

    def _tree_changes(self, base: _Listing, commit: str
                      ) -> tuple[str, list[tuple[str, str | None, str | None]]]:
        """(commit's root tree id, the blobs that differ from base's: (path, mode, blob id),
        mode None where a blob is gone)."""
        changes: list[tuple[str, str | None, str | None]] = []
        if self._lib is not None:
            tree = self._lib_tree_id(commit)
            with self._lib_lock:
                self._lib_diff(self._lib[base.tree], self._lib[tree], "", changes)
            return tree, changes
        p = self.git("diff-tree", "-r", "-z", "--raw", "--no-renames", base.commit, commit,
                     check=False)
        if p.returncode != 0:
            raise GitError(f"git diff-tree failed: no commit {commit} in {self.repo}")
        parts = p.stdout.split("\0")[:-1]   # each entry ends in NUL
        for meta, path in zip(parts[::2], parts[1::2], strict=True):
            old_mode, new_mode, _old, new_oid, _status = meta.lstrip(":").split()
            if old_mode in _BLOB_MODES:
                changes.append((path, None, None))
            if new_mode in _BLOB_MODES:
                changes.append((path, new_mode, new_oid))
        return "", changes

    def _lib_tree_id(self, commit: str) -> str:
        with self._lib_lock:
            try:
                return str(self._lib.revparse_single(commit).peel(pygit2.Tree).id)
            except (KeyError, ValueError, pygit2.GitError, pygit2.InvalidSpecError):
                raise GitError(f"git ls-tree failed: no commit {commit} in {self.repo}") from None

    def _lib_diff(self, a: pygit2.Tree, b: pygit2.Tree, prefix: str,
                  out: list[tuple[str, str | None, str | None]]) -> None:
        """The blobs that differ between trees a and b, descending only into subtrees whose
        ids differ (callers hold _lib_lock)."""
        old = {e.name: e for e in a}
        for e in b:
            o = old.pop(e.name, None)
            if o is not None and o.id == e.id and o.filemode == e.filemode:
                continue
            path = prefix + e.name
            if o is not None and o.type_str == "tree" and e.type_str == "tree":
                self._lib_diff(self._lib[o.id], self._lib[e.id], path + "/", out)
                continue
            if o is not None:
                self._lib_entry(o, path, None, out)
            self._lib_entry(e, path, True, out)
        for name, o in old.items():
            self._lib_entry(o, prefix + name, None, out)

    def _lib_entry(self, e: pygit2.Object, path: str, added: bool | None,
                   out: list[tuple[str, str | None, str | None]]) -> None:
        """The blobs of one tree entry, as added or (added None) as gone."""
        if e.type_str == "tree":
            rows = [(f"{path}/{p}", m, o) for p, m, o in self._lib_tree_rows(self._lib[e.id])]
        elif e.type_str == "blob":
            rows = [(path, f"{e.filemode:06o}", str(e.id))]
        else:
            rows = []   # a submodule's commit: never checked out
        out.extend(rows if added else [(p, None, None) for p, _m, _o in rows])

    # -- the user's checkout (agent-driven mode only) -----------------------------------------
    def worktree_changes(self) -> list[str]:
        """Target-relative paths with uncommitted changes in the user's checkout."""
        # raw output: stripping would eat the leading status column of the first entry
        out = self.git("status", "--porcelain=v1", "-z", "--untracked-files=all", cwd=self.repo,
                       check=False).stdout
        paths = []
        entries = out.split("\0")
        i = 0
        while i < len(entries):
            e = entries[i]
            if not e:
                i += 1
                continue
            code, path = e[:2], e[3:]
            if code[0] in "RC":
                i += 1  # the next entry is the rename source
            paths.append(self._target_rel(path))
            i += 1
        return paths

    def read_worktree_file(self, rel: str) -> str | None:
        p = self.target_root / rel
        return p.read_text(encoding="utf-8", errors="replace") if p.is_file() else None

    def restore_in_checkout(self, paths: list[str], commit: str) -> None:
        """Put paths in the user's checkout back to commit (untracked new ones are removed)."""
        tracked = self.list_files(commit)
        blobs = self.read_blobs(tracked[rel] for rel in paths if rel in tracked)
        for rel in paths:
            if rel in tracked:
                f = self.target_root / rel
                if f.is_symlink():
                    f.unlink()
                f.parent.mkdir(parents=True, exist_ok=True)
                f.write_bytes(blobs[tracked[rel]])
            else:
                f = self.target_root / rel
                if f.is_file():
                    f.unlink()

    def checkout_branch(self, tag: str) -> None:
        self.git("checkout", "--quiet", f"autoresearch/{tag}")

    def sync_index(self) -> None:
        """After the checked-out branch moved under us, make the index match HEAD."""
        self.git("reset", "--quiet")
