"""The run in memory: every experiment of one run, with the indexes the loop asks about.

Guarantees:
- Built once from the ledger when a run opens or resumes (`RunState.load`). After that the
  loop never reads the ledger back: every change is written through `add` and `update`, which
  write the ledger first (one transaction each, so a kill -9 loses nothing recorded) and then
  apply the same values here, in the form a read of the row would give (JSON round-tripped).
- Every question the loop asks per experiment (the measurements of a tree, the replicate
  groups, the repeats of a candidate, counts and cost) costs the same at experiment 10,000 as
  at experiment 10: the indexes are kept up to date on each write, never rebuilt.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

from .experiment import HistoryEntry, Kind, Status
from .ledger import MEASURED, Experiment, Ledger, Run, as_stored
from .policies import Sample
from .policies.base import FIT_SPAN, RECENT_GROUPS, SeededGroup
from .summary import best_of, kept_order, sample_from

#: statuses that do not count as a run of their tree (the seed of a re-measurement skips them)
_NOT_RUN = (Status.INVALID, Status.AGENT_ERROR)


class RunState:
    def __init__(self, ledger: Ledger, run: Run, rows: Iterable[Experiment] = ()):
        self.ledger = ledger
        self.run = run
        self.tag = run.tag
        self.rows: dict[int, Experiment] = {}           # id -> row, oldest first
        self.trees: dict[str, int] = {}                 # tree -> first experiment with it
        self._by_tree: dict[str, list[Experiment]] = {}
        self._repeats: dict[int, list[Experiment]] = {}  # candidate id -> rows measured for it
        # tree -> {id: metric} of its valid measurements, by id, for trees with 2+ of them (a
        # tree measured once, nearly all of them, costs no dict: its row is in _by_tree), and
        # their (first id, tree) in order: the groups as the ledger lists them
        self._groups: dict[str, dict[int, float]] = {}
        self._group_order: list[tuple[int, str]] = []
        self._history_ids: list[int] = []               # finished or pending, by id
        self._history: list[HistoryEntry] = []          # their entries, the same order
        self.next_seq = 1
        self.cost = 0.0
        self._kept: dict[int, Experiment] = {}          # id -> row, of every kept experiment
        self.incumbent: Experiment | None = None        # the best; the judge moves it
        self.last_crash: Experiment | None = None       # the latest crash or timeout with a log
        self.running_by: Counter[tuple[str | None, str | None]] = Counter()  # (agent, role) -> rows queued or running
        self._never_run = 0                             # near-duplicate rows (not experiments)
        self.watchers: list[Callable[[Experiment], None]] = []   # told of every row written
        for e in rows:
            self._index(e, new=True)
        self.incumbent = best_of(list(self.rows.values()))

    @classmethod
    def load(cls, ledger: Ledger, run: Run) -> RunState:
        return cls(ledger, run, ledger.iter_experiments(run.tag))

    # -- writes (ledger first, then memory) ---------------------------------------------------
    def add(self, **fields: Any) -> Experiment:
        """A new row; it carries its run's organisation (compare.py), if any."""
        if self.run.org is not None:
            fields.setdefault("org", self.run.org)
        e = self.ledger.add_experiment(self.tag, seq=self.next_seq, **fields)
        self._index(e, new=True)
        for watch in self.watchers:
            watch(e)
        return e

    def update(self, e: Experiment, **fields: Any) -> Experiment:
        """Write fields to e's row, then to e itself; returns e."""
        self.ledger.update(e.id, **fields)
        self._unindex(e)
        for k, v in as_stored(fields).items():
            setattr(e, k, v)
        self._index(e, new=False)
        for watch in self.watchers:
            watch(e)
        return e

    def _unindex(self, e: Experiment) -> None:
        self.cost -= e.cost_usd
        if e.status == Status.RUNNING:
            self.running_by[(e.agent, e.role)] -= 1
        self._kept.pop(e.id, None)
        if e.tree_sha and e.id in (values := self._groups.get(e.tree_sha, {})):
            self._unorder(e.tree_sha, values)
            del values[e.id]
            if len(values) < 2:
                del self._groups[e.tree_sha]
            else:
                self._order(e.tree_sha, values)

    def _index(self, e: Experiment, new: bool) -> None:
        self.cost += e.cost_usd
        if e.status == Status.RUNNING:
            self.running_by[(e.agent, e.role)] += 1
        if e.status == Status.KEEP:
            self._kept[e.id] = e
        if new:
            self.rows[e.id] = e
            self._never_run += e.status == Status.DUPLICATE
            self.next_seq = max(self.next_seq, e.seq + 1)
            if e.tree_sha:
                self._by_tree.setdefault(e.tree_sha, []).append(e)
            if e.candidate_of is not None:
                self._repeats.setdefault(e.candidate_of, []).append(e)
        if e.tree_sha and e.tree_sha not in self.trees and e.status != Status.INVALID:
            self.trees[e.tree_sha] = e.id
        if e.tree_sha and e.metric is not None and e.status in MEASURED:
            if (values := self._groups.get(e.tree_sha)) is None:
                values = {m.id: m.metric for m in self.measurements(e.tree_sha) if m.id != e.id}
            else:
                self._unorder(e.tree_sha, values)
            last = next(reversed(values), -1)
            values[e.id] = e.metric
            if e.id < last:   # an earlier row measured again: its value goes back in id order
                values = dict(sorted(values.items()))
            if len(values) >= 2:
                self._groups[e.tree_sha] = values
                self._order(e.tree_sha, values)
        if e.status in (Status.CRASH, Status.TIMEOUT) and e.log_path and (
                self.last_crash is None or e.id >= self.last_crash.id):
            self.last_crash = e
        self._note_history(e)

    def _order(self, tree: str, values: dict[int, float]) -> None:
        bisect.insort(self._group_order, (next(iter(values)), tree))

    def _unorder(self, tree: str, values: dict[int, float]) -> None:
        key = (next(iter(values)), tree)
        i = bisect.bisect_left(self._group_order, key)
        if i < len(self._group_order) and self._group_order[i] == key:
            del self._group_order[i]

    def _note_history(self, e: Experiment) -> None:
        """Keep the agents' history (finished and pending rows, by id) without a rebuild."""
        i = bisect.bisect_left(self._history_ids, e.id)
        listed = i < len(self._history_ids) and self._history_ids[i] == e.id
        if e.status.finished or e.status == Status.PENDING:
            if listed:
                self._history[i] = e.history_entry()
            else:
                self._history_ids.insert(i, e.id)
                self._history.insert(i, e.history_entry())
        elif listed:   # back to running (a resumed run measures it again)
            del self._history_ids[i]
            del self._history[i]

    # -- reads (memory only) --------------------------------------------------------------------
    def get(self, exp_id: int) -> Experiment:
        return self.rows[exp_id]

    @property
    def count(self) -> int:
        """Experiments in the run (--max-experiments): near-duplicates, never run, do not count."""
        return len(self.rows) - self._never_run

    def measurements(self, tree: str | None) -> list[Experiment]:
        """Every valid measurement of a tree, oldest first."""
        if tree is None:
            return []
        return [m for m in self._by_tree.get(tree, ())
                if m.metric is not None and m.status in MEASURED]

    def runs_before(self, tree: str | None, exp_id: int) -> int:
        """Earlier rows of this tree that ran (its seed offset)."""
        return sum(1 for m in self._by_tree.get(tree or "", ())
                   if m.id < exp_id and m.status not in _NOT_RUN)

    def on_tree(self, tree: str | None) -> list[Experiment]:
        return list(self._by_tree.get(tree or "", ()))

    def repeats_of(self, exp_id: int) -> list[Experiment]:
        return list(self._repeats.get(exp_id, ()))

    def replicate_groups(self) -> list[list[float]]:
        """The latest RECENT_GROUPS replicate groups (each a tree's valid measurements, by id),
        ordered by their first measurement: the end of what `Ledger.replicate_groups` lists,
        and all that a policy reads (policies/base.py)."""
        return [list(self._groups[t].values()) for _, t in self._group_order[-RECENT_GROUPS:]]

    def seeded_groups(self) -> list[SeededGroup]:
        """The same groups with the seed of each run (policies/pairing.py), but those measured
        over more than FIT_SPAN experiments (a long-lived best), which the seed fit leaves out:
        the first and last rows tell, so they are not built."""
        out = []
        for _, tree in self._group_order[-RECENT_GROUPS:]:
            values = self._groups[tree]
            ids = list(values)
            if self.rows[ids[-1]].seq - self.rows[ids[0]].seq > FIT_SPAN:
                continue
            rows = [self.rows[i] for i in ids]
            out.append(SeededGroup(tuple(values.values()), tuple(int(r.seed or 0) for r in rows),
                                   tuple(r.seq for r in rows)))
        return out

    def sample(self, e: Experiment) -> Sample:
        """summary.sample_from over the measurements held in memory."""
        return sample_from(e, self.measurements(e.tree_sha))

    @property
    def baseline(self) -> Experiment | None:
        """The run's first experiment (the unmodified target)."""
        return next(iter(self.rows.values()), None)

    def kept_chain(self) -> list[Experiment]:
        """Every kept experiment in the order it was kept (the last one is the best)."""
        return sorted(self._kept.values(), key=kept_order)

    def busy(self, tree: str | None) -> bool:
        """Is a row of this tree queued or running?"""
        return any(r.status == Status.RUNNING for r in self._by_tree.get(tree or "", ()))

    def history(self) -> list[HistoryEntry]:
        """Finished and pending experiments, oldest first (what an agent may know)."""
        return list(self._history)

    def open_rows(self) -> list[Experiment]:
        """Rows a resumed run must measure again or judge: running, interrupted, pending, and
        a failed baseline."""
        return [e for e in self.rows.values() if e.status in (Status.RUNNING, Status.INTERRUPTED,
                                                              Status.PENDING)
                or (e.kind == Kind.BASELINE and e.status in (Status.CRASH, Status.TIMEOUT))]
