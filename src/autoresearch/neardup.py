"""Near-duplicate proposals: caught before they run, recorded as `duplicate`, never measured.

An exact duplicate (the same files as an earlier experiment) is caught by its git tree in
`proposals.py`. Here a proposal is compared with every earlier experiment that has code (the
baseline, candidates and rebases, whatever their status), under three rules, in this order:

1. formatting — its editable files equal the earlier experiment's up to formatting: Python
   files compare by their syntax tree (comments, blank lines, spacing, parentheses and quote
   style do not count), other files by their whitespace-normalised lines.
2. constants — they are equal except for numbers, and every number that differs is within
   `[notes] constant_tolerance` of the earlier value (relative: |a - b| <= tol * max(|a|, |b|);
   1% by default, below the noise of any metric worth tuning). A change to a constant that
   lands on a value already tried, give or take the tolerance, is the same experiment.
3. similar diff — its change (normalised lines removed and added against the best it was
   proposed against) and the change of an earlier experiment proposed against the SAME best
   have a Jaccard similarity of at least `[notes] similarity` (0.9 by default). Only the same
   best: the same idea tried again on a newer best is a new experiment.

Fingerprints are computed once per file content (git blob) and indexed: rule 1 is a dictionary
lookup; rules 2 and 3 compare with at most the latest `WINDOW` experiments of the same code
skeleton and of the same best, so a check costs the same at experiment 10,000 as at 10.
"""

from __future__ import annotations

import ast
import hashlib
import math
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .config import NotesSettings

WINDOW = 500          # rules 2 and 3: the latest experiments compared with
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][-+]?\d+)?(?![\w.])")
_PLACEHOLDER = "\x00"


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def normal_lines(text: str) -> list[str]:
    """Lines with their whitespace collapsed, blank ones dropped."""
    return [" ".join(ln.split()) for ln in text.splitlines() if ln.strip()]


@dataclass(frozen=True)
class FileFingerprint:
    """A file's content up to formatting (`canon`), the same with its numbers taken out
    (`skeleton`), and those numbers in order."""

    canon: str
    skeleton: str
    numbers: tuple[float, ...]


class _Numbers(ast.NodeTransformer):
    def __init__(self) -> None:
        self.found: list[float] = []

    def visit_Constant(self, node: ast.Constant) -> ast.AST:
        v = node.value
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            self.found.append(float(v))
            return ast.copy_location(ast.Constant(value=_PLACEHOLDER), node)
        return node


def fingerprint(path: str, text: str) -> FileFingerprint:
    lines = normal_lines(text)
    if path.endswith(".py"):
        try:
            tree = ast.parse(text)
        except (SyntaxError, ValueError):
            tree = None
        if tree is not None:
            canon = ast.dump(tree)
            numbers = _Numbers()
            skeleton = ast.dump(numbers.visit(tree))
            return FileFingerprint(_hash(canon), _hash(skeleton), tuple(numbers.found))
    joined = "\n".join(lines)
    numbers_text = [float(m.group()) for m in _NUMBER.finditer(joined)]
    return FileFingerprint(_hash(joined), _hash(_NUMBER.sub(_PLACEHOLDER, joined)),
                           tuple(numbers_text))


@dataclass(frozen=True)
class Version:
    """The editable files of one commit, fingerprinted."""

    files: tuple[tuple[str, FileFingerprint], ...]   # sorted by path

    @property
    def canon(self) -> str:
        return _hash("\n".join(f"{p}\x01{f.canon}" for p, f in self.files))

    @property
    def skeleton(self) -> str:
        return _hash("\n".join(f"{p}\x01{f.skeleton}" for p, f in self.files))

    @property
    def numbers(self) -> tuple[float, ...]:
        return tuple(n for _, f in self.files for n in f.numbers)


def changed_lines(before: dict[str, str], after: dict[str, str]) -> frozenset[str]:
    """The change between two versions' files as the set of `path -line` / `path +line`
    (whitespace-normalised lines; a line changed twice counts twice)."""
    import difflib

    out: Counter[str] = Counter()
    for path in sorted(set(before) | set(after)):
        if before.get(path) == after.get(path):
            continue
        a, b = normal_lines(before.get(path, "")), normal_lines(after.get(path, ""))
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, a, b, autojunk=False).get_opcodes():
            if tag == "equal":
                continue
            out.update(f"{path} -{ln}" for ln in a[i1:i2])
            out.update(f"{path} +{ln}" for ln in b[j1:j2])
    return frozenset(f"{line}\x00{k}" for line, n in out.items() for k in range(n))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


def within(a: float, b: float, tolerance: float) -> bool:
    if a == b:
        return True
    if not (math.isfinite(a) and math.isfinite(b)):
        return False
    return abs(a - b) <= tolerance * max(abs(a), abs(b))


@dataclass
class Match:
    """The earlier experiment a proposal repeats, and which rule says so."""

    exp_id: int
    rule: str          # "formatting" | "constants" | "similar"
    detail: str


@dataclass(slots=True)
class _Known:
    exp_id: int
    numbers: tuple[float, ...]
    parent: str | None
    commit: str
    change: frozenset[str] | None = None    # against its parent (rule 3), kept small: changed lines


@dataclass
class NearDuplicates:
    """The index of earlier experiments' code. `read(commit)` gives a commit's editable files
    as {path: (blob id, text)} (the ratchet's reads, cached by the caller)."""

    settings: NotesSettings
    read: Callable[[str], dict[str, tuple[str, str]]]
    _by_blob: dict[str, FileFingerprint] = field(default_factory=dict)
    _by_commit: dict[str, Version] = field(default_factory=dict)
    _canon: dict[str, int] = field(default_factory=dict)          # -> experiment id
    _skeleton: dict[str, list[_Known]] = field(default_factory=dict)
    # skeleton -> (experiments seen, the numbers of the latest WINDOW of them, one row each)
    _numbers: dict[str, tuple[int, object]] = field(default_factory=dict)
    _by_parent: dict[str, list[_Known]] = field(default_factory=dict)
    _changes: dict[tuple[str, str], frozenset[str]] = field(default_factory=dict)   # recent ones
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def change(self, commit: str, parent: str) -> frozenset[str]:
        """A commit's change against its parent (any thread; the latest WINDOW are cached)."""
        with self._lock:
            known = self._changes.get((commit, parent))
        if known is not None:
            return known
        texts = {p: t for p, (_, t) in self.read(parent).items()}
        mine = changed_lines(texts, {p: t for p, (_, t) in self.read(commit).items()})
        self._keep(self._changes, (commit, parent), mine, WINDOW)
        return mine

    def _keep(self, cache: dict, key: object, value: object, size: int) -> None:
        """A bounded cache: the oldest entries go first (memory stays flat on long runs)."""
        with self._lock:
            cache[key] = value
            while len(cache) > size:
                cache.pop(next(iter(cache)))

    def version(self, commit: str) -> Version:
        """The fingerprints of a commit's editable files (any thread)."""
        with self._lock:
            known = self._by_commit.get(commit)
        if known is not None:
            return known
        files = []
        for path, (oid, text) in sorted(self.read(commit).items()):
            with self._lock:
                fp = self._by_blob.get(oid)
            if fp is None:
                fp = fingerprint(path, text)
                self._keep(self._by_blob, oid, fp, 8 * WINDOW)
            files.append((path, fp))
        v = Version(tuple(files))
        self._keep(self._by_commit, commit, v, 2 * WINDOW)
        return v

    def add(self, exp_id: int, commit: str, parent: str | None) -> None:
        """Index an experiment's code (an earlier version keeps its first experiment)."""
        v = self.version(commit)
        known = _Known(exp_id, v.numbers, parent, commit)
        self._canon.setdefault(v.canon, exp_id)
        self._skeleton.setdefault(v.skeleton, []).append(known)
        if parent is not None:
            same = self._by_parent.setdefault(parent, [])
            same.append(known)
            if len(same) > WINDOW:   # rule 3 compares the latest WINDOW: older ones drop their change
                same.pop(0).change = None

    def find(self, commit: str, parent: str) -> Match | None:
        """The earlier experiment this commit (proposed against `parent`) repeats, or None."""
        s = self.settings
        v = self.version(commit)
        if (exp_id := self._canon.get(v.canon)) is not None:
            return Match(exp_id, "formatting", "the same code up to formatting and comments")
        k = self._same_constants(v)
        if k is not None:
            pairs = [(a, b) for a, b in zip(v.numbers, k.numbers, strict=True) if a != b]
            shown = ", ".join(f"{_num(a)} vs {_num(b)}" for a, b in pairs[:3])
            return Match(k.exp_id, "constants", f"the same code with constants within "
                         f"{s.constant_tolerance:.0%} of those tried: {shown}")
        mine: frozenset[str] | None = None
        for k in reversed(self._by_parent.get(parent, [])[-WINDOW:]):
            if mine is None:
                mine = self.change(commit, parent)
            if k.change is None:
                k.change = self.change(k.commit, parent)
            small, large = sorted((len(mine), len(k.change)))
            if small < s.similarity * large:       # its bound, min/max, is below the threshold
                continue
            sim = jaccard(mine, k.change)
            if mine and sim >= s.similarity:
                return Match(k.exp_id, "similar", f"a change {sim:.0%} similar to it, against the "
                             f"same best")
        return None


    def _same_constants(self, v: Version) -> _Known | None:
        """Rule 2: the latest of the last WINDOW experiments with v's skeleton whose numbers
        differ from v's, each within the tolerance. All of them are compared at once (one
        array per skeleton, extended as experiments are added), not one by one."""
        import numpy as np

        everyone = self._skeleton.get(v.skeleton, [])   # only ever appended to
        group = everyone[-WINDOW:]
        if not group:
            return None
        mine = np.array(v.numbers, dtype=float)
        # one skeleton, one count of numbers (each is a placeholder in it): rows are regular
        done, rows = self._numbers.get(v.skeleton, (0, None))
        if rows is None or done != len(everyone):
            new = everyone[max(done, len(everyone) - WINDOW):]
            fresh = np.array([k.numbers for k in new], dtype=float).reshape(len(new), -1)
            if rows is not None and rows.shape[1] == fresh.shape[1]:
                fresh = np.concatenate([rows, fresh])[-WINDOW:]
            rows = fresh
            self._numbers[v.skeleton] = (len(everyone), rows)
        tol = self.settings.constant_tolerance
        differ = rows != mine            # NaN differs from everything, as in `within`
        with np.errstate(invalid="ignore", over="ignore"):
            close = (np.isfinite(rows) & np.isfinite(mine)
                     & (np.abs(rows - mine) <= tol * np.maximum(np.abs(rows), np.abs(mine))))
        hits = np.flatnonzero(differ.any(axis=1) & (close | ~differ).all(axis=1))
        return group[hits[-1]] if hits.size else None


def _num(x: float) -> str:
    return f"{int(x)}" if x.is_integer() and abs(x) < 1e15 else f"{x:.6g}"
