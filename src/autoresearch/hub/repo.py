"""The hub's git: a bare repository for the code, quarantined intake of bundles, and the
bundle exchange of contributors and verifiers. It extends the ratchet (`ratchet.Ratchet`, the
module that runs git) and runs git the same way: plumbing only, hooks off, one identity.

Guarantees of intake (`HubRepo.quarantine`):
- A bundle is unpacked only into a throwaway bare repository beside the hub's, which borrows
  the hub's objects read-only (alternates): no hooks (`core.hooksPath=/dev/null`), no user or
  system git config (so no filters, no fsmonitor, no credential helpers), no checkout.
- Every received object is checked by git's fsck (`transfer.fsckObjects`) and the quarantine
  again with `git fsck --strict`; the unpacked size is capped.
- Only after every check passed are the objects fetched into the hub's repository, pinned
  under refs/claims/SHA. A refused bundle leaves no object, ref or file behind.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..errors import GitError
from ..ratchet import _IDENTITY, Ratchet, safe_git_env

#: git reads no user or system configuration in the hub's repositories
_CLEAN_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_TERMINAL_PROMPT": "0"}
_SAFE = ["-c", "core.fsmonitor=false", "-c", "transfer.fsckObjects=true",
         "-c", "fetch.fsckObjects=true", "-c", "protocol.allow=never", "-c", "protocol.file.allow=always"]


class IntakeError(Exception):
    """A bundle refused at intake; `status` is the HTTP status, the message says why and the fix."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass
class Change:
    path: str        # target-relative
    old_mode: str
    new_mode: str
    kind: str        # A, M, D, T, ...


@dataclass
class Received:
    commit: str
    parents: list[str]
    tree: str
    quarantine: Path
    changes: list[Change]      # against its first parent
    diff: str                  # the patch against its first parent (repository paths)


def _git(args: list[str], cwd: Path | None = None, input: bytes | None = None,
         check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(["git", *_IDENTITY, *_SAFE, *args], cwd=cwd, input=input,
                       capture_output=True, env={**os.environ, **_CLEAN_ENV})
    if check and p.returncode != 0:
        err = p.stderr.decode(errors="replace").strip()
        raise GitError(f"git {' '.join(args[:2])} failed: {err.splitlines()[-1] if err else p.returncode}")
    return p


def parse_bundle_header(data: bytes) -> tuple[list[str], list[str]]:
    """(head object ids, prerequisite object ids) of a v2/v3 git bundle; IntakeError if it is
    not one. Read in Python, so garbage never reaches git."""
    end = data.find(b"\n\n")
    if not data.startswith((b"# v2 git bundle\n", b"# v3 git bundle\n")) or end < 0:
        raise IntakeError(400, "the bundle is not a git bundle (no '# v2 git bundle' header) — "
                               "make it with 'git bundle create FILE COMMIT ^PARENT'")
    heads, prereq = [], []
    for line in data[:end].decode("utf-8", errors="replace").splitlines()[1:]:
        if line.startswith("@"):
            if line.strip() not in ("@object-format=sha1",):
                raise IntakeError(400, f"unsupported bundle capability {line.strip()!r}")
            continue
        sha = line.lstrip("-").split(" ", 1)[0]
        if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
            raise IntakeError(400, f"the bundle header line {line[:60]!r} is malformed")
        (prereq if line.startswith("-") else heads).append(sha)
    return heads, prereq


def _bare_skeleton(path: Path, alternate: Path) -> None:
    """An empty bare repository that borrows `alternate`'s objects (no git process needed)."""
    for d in ("objects/info", "objects/pack", "refs/heads", "refs/tags"):
        (path / d).mkdir(parents=True, exist_ok=True)
    (path / "HEAD").write_text("ref: refs/heads/main\n")
    (path / "config").write_text("[core]\n\trepositoryformatversion = 0\n\tbare = true\n"
                                 "\thooksPath = /dev/null\n")
    (path / "objects" / "info" / "alternates").write_text(str(alternate) + "\n")


def init_repo(path: Path, bare: bool = False) -> None:
    """An empty repository at path (for the hub, and for a verifier's private copy)."""
    path.mkdir(parents=True, exist_ok=True)
    _git(["init", "-q", *(["--bare"] if bare else []), str(path)])


class HubRepo(Ratchet):
    """A bare repository (the hub's, or a local one used through bundles), git run safely."""

    def __init__(self, path: Path, subdir: str = ""):
        # no Ratchet.__init__: a bare repository has no top level to ask git about
        self.repo = Path(path).resolve()
        self.target_root = self.repo
        self.common_dir = self.repo
        # bare (the hub's): the repository is its own git directory; else (a verifier's) .git
        dot_git = self.repo / ".git"
        self.git_dir = dot_git if dot_git.is_dir() else self.repo
        self._base_env = safe_git_env()
        self.subdir = subdir
        self.worktrees_dir = self.repo / "worktrees-unused"
        self._init_helpers()

    def git(self, *args: str, cwd: Path | None = None, input: str | bytes | None = None,
            env: dict[str, str] | None = None, check: bool = True, binary: bool = False):
        return super().git(*_SAFE, *args, cwd=cwd, input=input, env={**_CLEAN_ENV, **(env or {})},
                           check=check, binary=binary)

    def _spawn(self, *args: str, text: bool, stderr: int) -> subprocess.Popen:
        # the long-lived helpers run as safely as every other git call here
        return subprocess.Popen(["git", f"--git-dir={self.git_dir}", *_IDENTITY, *_SAFE, *args],
                                cwd=self.repo, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=stderr, text=text, env={**self._base_env, **_CLEAN_ENV})

    # -- setup ---------------------------------------------------------------------------------
    @classmethod
    def create(cls, path: Path, source: Ratchet, commit: str) -> HubRepo:
        """The hub's bare repository, holding the target's history up to commit."""
        if not (path / "HEAD").exists():
            init_repo(path, bare=True)
        repo = cls(path, source.subdir)
        if not repo.has_commit(commit):
            repo.git("fetch", "-q", "--no-tags", str(source.repo), f"{commit}:refs/hub/base")
        repo.git("update-ref", "refs/hub/base", commit)
        return repo

    def has_commit(self, sha: str) -> bool:
        p = self.git("cat-file", "-e", f"{sha}^{{commit}}", check=False)
        return p.returncode == 0

    def numstat(self, a: str, b: str) -> tuple[int, int]:
        _, added, removed = self._numstat(a, b)
        return added, removed

    # -- intake --------------------------------------------------------------------------------
    @contextmanager
    def quarantine(self, bundle: bytes, max_bytes: int, known: Iterable[str] | None = None
                   ) -> Iterator[Received]:
        """Unpack a bundle into a throwaway repository; yields what it holds. Removed on exit.

        `known`: commits the caller knows the hub has (no git call to check them)."""
        heads, prerequisites = parse_bundle_header(bundle)
        if len(set(heads)) != 1:
            raise IntakeError(400, f"the bundle must hold exactly one commit head, it holds "
                                   f"{len(set(heads))} — make it with 'git bundle create FILE "
                                   f"COMMIT ^PARENT'")
        head = heads[0]
        missing = [p for p in prerequisites if p not in (known or ()) and not self.has_object(p)]
        if missing:
            raise IntakeError(422, f"the bundle needs commit {missing[0][:12]}, which the hub does "
                                   f"not have — bundle your commit against its hub parent")
        qroot = self.repo.parent / "quarantine"
        q = qroot / f"{os.getpid()}-{uuid.uuid4().hex}"
        try:
            _bare_skeleton(q, alternate=self.repo / "objects")
            for i, sha in enumerate(prerequisites):   # where the history walks may stop
                (q / "refs" / "heads" / f"have-{i}").write_text(sha + "\n")
            path = q / "claim.bundle"
            path.write_bytes(bundle)
            # the hub's own refs (one per claim) are not read: the prerequisites say enough
            p = _git(["-c", "core.alternateRefsCommand=true", "fetch", "-q", "--no-tags",
                      str(path), f"{head}:refs/claim"], cwd=q, check=False)
            if p.returncode != 0:
                err = p.stderr.decode(errors="replace").strip().splitlines()
                raise IntakeError(400, f"the bundle failed git's object checks "
                                       f"({err[-1] if err else 'fetch failed'})")
            size = sum(f.stat().st_size for f in (q / "objects").rglob("*") if f.is_file())
            if size > max_bytes:
                raise IntakeError(413, f"the bundle unpacks to {size} bytes, over the cap of "
                                       f"{max_bytes} — make a smaller change")
            # fetch proved the new objects connect to the prerequisites; without refs, fsck
            # checks every received object and walks no history (its cost stays flat)
            for ref in (q / "refs").rglob("*"):
                if ref.is_file():
                    ref.unlink()
            p = _git(["fsck", "--strict", "--no-dangling", "--no-full", "--no-progress",
                      "--no-reflogs"], cwd=q, check=False)
            if p.returncode != 0:
                err = p.stderr.decode(errors="replace").strip().splitlines()
                raise IntakeError(400, f"git fsck refused the bundle's objects "
                                       f"({err[-1] if err else 'fsck failed'})")
            yield self._read_commit(q, head)
        finally:
            shutil.rmtree(q, ignore_errors=True)

    def clean_quarantine(self) -> None:
        """Remove what intakes of dead hub processes left (a kill -9 in the middle of one)."""
        import psutil

        qroot = self.repo.parent / "quarantine"
        for q in qroot.glob("*") if qroot.is_dir() else []:
            pid = q.name.split("-", 1)[0]
            if not pid.isdigit() or not psutil.pid_exists(int(pid)) or int(pid) == os.getpid():
                shutil.rmtree(q, ignore_errors=True)

    def is_ancestor(self, a: str, b: str) -> bool:
        return self.git("merge-base", "--is-ancestor", a, b, check=False).returncode == 0

    def _read_commit(self, q: Path, head: str) -> Received:
        """The commit's tree, parents, changed paths (with modes) and patch, in one git call."""
        p = _git(["diff-tree", "-r", "--always", "--no-renames", "--raw", "-p", "--pretty=raw", "--no-color",
                  "--no-ext-diff", "--no-textconv", head], cwd=q, check=False)
        if p.returncode != 0:
            raise IntakeError(400, "the bundle's head is not a commit")
        text = p.stdout.decode("utf-8", errors="replace")
        header, _, body = text.partition("\n\n")
        tree, parents = "", []
        for line in header.splitlines():
            key, _, value = line.partition(" ")
            if key == "tree":
                tree = value.strip()
            elif key == "parent":
                parents.append(value.strip())
        if not tree:
            raise IntakeError(400, "the bundle's head is not a commit")
        changes, diff_at = [], body.find("\ndiff --git ")
        for line in (body if diff_at < 0 else body[:diff_at]).splitlines():
            if line.startswith(":") and "\t" in line:
                meta, path = line[1:].split("\t", 1)
                old_mode, new_mode, _old, _new, kind = meta.split()
                changes.append(Change(self._target_rel(path), old_mode, new_mode, kind))
        diff = body[diff_at + 1:] if diff_at >= 0 else ""
        return Received(head, parents, tree, q, changes, diff)

    def has_object(self, sha: str) -> bool:
        return self.git("cat-file", "-e", sha, check=False).returncode == 0

    def admit(self, received: Received) -> str:
        """Move a checked commit's objects into the hub and pin it; returns its ref.

        Objects are content-addressed, so moving the quarantine's loose objects and packs in
        (packs last, index after pack) can only add objects; the ref is written after them."""
        src = received.quarantine / "objects"
        dst = self.repo / "objects"
        for d in sorted(src.iterdir()):
            if len(d.name) == 2 and d.is_dir():
                (dst / d.name).mkdir(exist_ok=True)
                for f in d.iterdir():
                    os.replace(f, dst / d.name / f.name)
        packs = src / "pack"
        if packs.is_dir():
            for ext in (".pack", ".rev", ".idx"):
                for f in packs.glob(f"*{ext}"):
                    os.replace(f, dst / "pack" / f.name)
        ref = f"refs/claims/{received.commit}"
        self.git("update-ref", ref, received.commit)
        return ref

    def set_ref(self, ref: str, commit: str) -> None:
        self.git("update-ref", ref, commit)

    def refs(self, prefix: str) -> dict[str, str]:
        out = self.git("for-each-ref", "--format=%(refname) %(objectname)", prefix)
        return dict(line.split() for line in out.splitlines() if line.strip())

    def delete_ref(self, ref: str) -> None:
        self.git("update-ref", "-d", ref)

    def bundle(self, want: str, haves: Iterable[str]) -> bytes:
        """A bundle of `want` and its history, minus what the other side says it has."""
        known = [h for h in dict.fromkeys(haves) if h != want and self.has_commit(h)]
        with tempfile.TemporaryDirectory(prefix="ar-bundle-") as tmp:
            path = Path(tmp) / "out.bundle"
            ref = f"refs/hub/out/{uuid.uuid4().hex}"
            self.git("update-ref", ref, want)
            try:
                p = self.git("bundle", "create", "-q", str(path), ref, *[f"^{h}" for h in known],
                             check=False)
                if p.returncode != 0:   # want is one of the haves' ancestors: nothing to send
                    self.git("bundle", "create", "-q", str(path), ref)
            finally:
                self.delete_ref(ref)
            return path.read_bytes()

    def fetch_bundle(self, data: bytes, commit: str, ref: str) -> None:
        """Take a bundle from the hub into this repository, pinned at ref."""
        with tempfile.TemporaryDirectory(prefix="ar-bundle-") as tmp:
            path = Path(tmp) / "in.bundle"
            path.write_bytes(data)
            heads = self.git("bundle", "list-heads", str(path)).split()
            if not heads:
                raise GitError("the hub sent an empty bundle")
            self.git("fetch", "-q", "--no-tags", str(path), f"{heads[1]}:{ref}")
        if self.resolve(ref) != commit:
            raise GitError(f"the hub's bundle does not hold {commit[:12]}")


def local(ratchet: Ratchet) -> HubRepo:
    """The repository of a ratchet (a contributor's checkout, a verifier's copy), driven
    through bundles with the hub."""
    return HubRepo(ratchet.repo, ratchet.subdir)
