"""Research notes that survive context loss, and the machine-made summary of what was tried.

The notes: one text per run, kept in the ledger (`Ledger.research_notes`), shared by every agent
of the run and shown in each prompt. Agents write them outside the editable code:
- a coding-agent CLI edits `.autoresearch-notes.md` in its scratch checkout (the harness writes
  the current notes there and reads the file back after the proposal; it is never committed
  and never counts as an edit of a locked file);
- an LLM API agent adds `Research note: ...` lines to its answer (appended, signed with the
  experiment number and the agent);
- a script agent's line may carry `"notes": "..."` (appended).
They are bounded by `[notes] max_chars`: past it, the oldest lines are dropped (and the agent
is told). The agent never sees the holdout, so its notes cannot hold it.

The summary (`Tried`): every candidate grouped by theme (a top-level constant of a Python file,
other code of a file, a non-Python file, a file added or deleted) with its outcomes (kept,
discarded, failed, near-duplicates) and the best effect seen, against the best each was proposed
against, in the metric's units. It is made from the same rows and metrics the agent's history
shows (never the holdout, which lives in the decision records), bounded by
`[notes] summary_chars`: the most tried themes first.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from .agents.params import find_constants
from .experiment import Kind, Status
from .ledger import Experiment
from .neardup import fingerprint

NOTES_FILE = ".autoresearch-notes.md"     # in a coding agent's scratch checkout
DROPPED = "[older notes dropped to stay within {n} characters]"


def bound(text: str, max_chars: int) -> tuple[str, bool]:
    """`text` within max_chars: the oldest (first) lines dropped first; True when cut."""
    text = text.strip()
    if len(text) <= max_chars:
        return text, False
    head = DROPPED.format(n=max_chars)
    lines = text.splitlines()
    while lines and len(head) + 1 + len("\n".join(lines)) > max_chars:
        lines.pop(0)
    if not lines:       # one line longer than the bound: its end is kept
        return head + "\n" + text[-(max_chars - len(head) - 1):], True
    return head + "\n" + "\n".join(lines), True


def add_entry(notes: str, entry: str, *, seq: int | None, who: str,
              max_chars: int) -> tuple[str, bool]:
    """The notes with one entry appended, signed with its experiment (if it became one) and
    its agent (bounded)."""
    line = " ".join(entry.split())
    sign = f"#{seq} ({who})" if seq is not None else f"({who})"
    body = (notes.strip() + "\n" if notes.strip() else "") + f"- {sign}: {line}"
    return bound(body, max_chars)


# == the machine-made summary =====================================================================
def themes_of(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What a change touched, from the editable files before and after it."""
    out: list[str] = []
    for path in sorted(set(before) | set(after)):
        a, b = before.get(path), after.get(path)
        if a == b:
            continue
        if a is None:
            out.append(f"{path} (new file)")
            continue
        if b is None:
            out.append(f"{path} (deleted)")
            continue
        if not path.endswith(".py"):
            out.append(path)
            continue
        old = {c.name: c.value for c in find_constants(path, a)}
        new = {c.name: c.value for c in find_constants(path, b)}
        names = sorted(n for n in old.keys() & new.keys() if old[n] != new[n])
        out.extend(f"{path}: {n}" for n in names)
        fa, fb = fingerprint(path, a), fingerprint(path, b)
        if fa.skeleton != fb.skeleton or not names and fa.canon != fb.canon:
            out.append(f"{path} (code)")
    return out


@dataclass
class _Theme:
    counts: Counter[str] = field(default_factory=Counter)   # outcome -> experiments
    best: float | None = None      # the best effect (positive: better), in metric units
    best_seq: int | None = None


def _outcome(status: Status) -> str:
    if status in (Status.KEEP, Status.REBASED):
        return "kept"
    if status in (Status.DISCARD, Status.PRUNED):
        return "discarded"
    if status == Status.DUPLICATE:
        return "duplicates"
    return "failed" if status.failed else "open"


@dataclass
class Tried:
    """Themes per experiment, and per theme its outcomes, kept up to date as rows change
    (`observe`, a RunState watcher): rendering costs the same at experiment 10,000 as at 10.

    `read(commit)`: a commit's editable files; `value(e)`: the mean of e's measurements;
    `commit_row(sha)`: the experiment of a commit (the best a candidate was proposed against).
    A candidate's effect is taken once, when it is first judged (kept, discarded, rebased).
    """

    read: Callable[[str], dict[str, str]]
    direction: str
    max_chars: int
    value: Callable[[Experiment], float | None] = lambda e: e.metric
    commit_row: Callable[[str], Experiment | None] = lambda sha: None
    _themes: dict[int, tuple[str, ...]] = field(default_factory=dict)   # experiment id -> themes
    _outcome: dict[int, str] = field(default_factory=dict)         # experiment id -> counted as
    _judged: set[int] = field(default_factory=set)
    _by_theme: dict[str, _Theme] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, e: Experiment, themes: list[str] | None = None) -> None:
        """Remember a candidate's themes (computed from git when not given) and count it."""
        if e.kind != Kind.CANDIDATE:
            return
        if themes is None:
            if not (e.commit_sha and e.parent):
                return
            themes = themes_of(self.read(e.parent), self.read(e.commit_sha))
        with self._lock:
            self._themes[e.id] = tuple(sys.intern(t) for t in themes)
        self.observe(e)

    def observe(self, e: Experiment) -> None:
        """A row was written: move its count to its new outcome; take its effect once judged."""
        themes = self._themes.get(e.id)
        if themes is None:
            return
        outcome = _outcome(e.status)
        effect = None
        if e.id not in self._judged and e.status in (Status.KEEP, Status.DISCARD,
                                                     Status.REBASED):
            self._judged.add(e.id)
            parent = self.commit_row(e.parent) if e.parent else None
            mine, theirs = self.value(e), self.value(parent) if parent is not None else None
            if mine is not None and theirs is not None:
                effect = (theirs - mine) if self.direction == "minimize" else (mine - theirs)
        with self._lock:
            before = self._outcome.get(e.id)
            self._outcome[e.id] = outcome
            for name in themes:
                t = self._by_theme.setdefault(name, _Theme())
                if before is None:
                    t.counts["tried"] += 1
                elif before != outcome:
                    t.counts[before] -= 1
                if before != outcome:
                    t.counts[outcome] += 1
                if effect is not None and (t.best is None or effect > t.best):
                    t.best, t.best_seq = effect, e.seq

    def render(self) -> str:
        """The summary table, at most max_chars: the most tried themes first."""
        with self._lock:
            themes = {n: (Counter(t.counts), t.best, t.best_seq) for n, t in self._by_theme.items()}
        if not themes:
            return ""
        better = "lower" if self.direction == "minimize" else "higher"
        preface = (f"Effect: the metric's change against the best each was proposed against "
                   f"(positive = better, i.e. {better}).")
        head = ("| theme | tried | kept | discarded | failed | near-duplicates | best effect |\n"
                "|---|---|---|---|---|---|---|")
        lines, used = [], len(preface) + len(head) + 40     # 40: the line of themes not shown
        order = sorted(themes.items(), key=lambda kv: (-kv[1][0]["tried"], kv[0]))
        for name, (c, best, seq) in order:
            shown = "-" if best is None else f"{best:+.4g} (#{seq})"
            line = (f"| {name} | {c['tried']} | {c['kept']} | {c['discarded']} | {c['failed']} | "
                    f"{c['duplicates']} | {shown} |")
            if used + len(line) + 1 > self.max_chars:
                break
            lines.append(line)
            used += len(line) + 1
        rest = len(order) - len(lines)
        tail = f"\n({rest} rarer themes not shown.)" if rest else ""
        return f"{preface}\n{head}\n" + "\n".join(lines) + tail
