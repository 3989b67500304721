"""Search strategies: which node the next proposal starts from, and with which operator.

Two strategies, chosen by `strategy` in autoresearch.toml or `run --strategy`:

- `ratchet` (the default): every proposal starts from the best, as in Karpathy's loop. The
  agent hears of no operator and behaves exactly as it always has.
- `tree`: a tree search in the manner of AIDE. Every measured, valid experiment is a node; the
  nodes worth proposing from form a bounded population, and every proposal applies one of
  three operators to one node:
      draft    a fresh idea, from the root (the baseline);
      improve  a refinement of a node of the population, the best or not;
      debug    a fix of a node whose run failed (crash, timeout, over budget, invalid run step).
  The agent's context names the operator and the node (its runs, its diff against the best).

Guarantees (both strategies):
- A strategy only chooses where a proposal starts. Whether a result is kept stays the judge's
  verdict: the policy compares it with the best, so the branch only ever moves to a verified
  best. Under `tree` a winner proposed from any node is kept as it was measured (its own tree,
  committed on top of the best), never replayed onto another node.
- Every node is a ledger row whose commit is pinned under refs/autoresearch/TAG/SEQ before it
  runs; its `node_parent` and `operator` columns say where it came from. A resumed run (after a
  kill -9 too) rebuilds the tree by replaying the ledger's rows in order (`TreeStrategy.__init__`).

The rule of `tree` (the README's "Search strategies" says the same):
1. Nodes: the baseline and every candidate measured without failing or breaking a constraint,
   kept or not. A node's value v is the mean of its runs, signed so that larger is better.
2. Noise: sigma is the policy's noise sd of one run (`Policy.estimate(best).sigma`, pooled over
   the run's repeated measurements). None or 0 (nothing measured twice yet, or a metric that
   repeats exactly): comparisons are exact.
3. Population: at most `[tree] population` nodes. The root and the best always belong; the rest
   are ranked by the lower bound v - sigma / sqrt(runs), so one lucky run is not trusted beyond
   its noise. When a node enters a full population, the lowest-ranked other node leaves for good.
   A node reached by more than `max_steps_back` children in a row that were each worse than their
   parent (reward below 0.5, rule 4) never enters: a step back may set up a gain, a walk
   downhill does not.
4. Reward of an expansion: a child c of node n earns the probability, under the noise model,
   that it is better than its parent: Phi((v_c - v_n) / (sigma * sqrt(1/m_c + 1/m_n))) with m
   the runs of each (exact comparisons: 1 better, 0.5 equal, 0 worse). A child that failed
   (crash, timeout, over budget, invalid, agent error, pruned, broke a constraint) earns 0; one
   still being proposed, run or judged counts 0.5, so that parallel slots spread out.
5. Choice (UCB1): score(n) = Q(n) + c * sqrt(ln(1 + K) / (1 + k(n))), where Q(n) = (r(n) + the
   rewards of its last `window` children) / (1 + k(n)), r(n) is the reward n itself earned its
   parent (its first observation: a node that improved on its parent is likely to be improved
   on; 0.5 for the root and a debug's fix), k(n) is how many children that counts, K the sum of
   k over the population and c = `exploration` (UCB1's sqrt 2 by default). The highest score
   is expanded (ties: the higher lower bound, then the older node). Expanding the root is a draft; the root
   is expanded until it has `drafts` children before any other node is.
6. Debug first: when a failed candidate that has no child yet is open, and fewer than
   `max_debug_depth` debug proposals in a row led to it, the newest such node is debugged with
   probability `debug_prob` (a generator seeded with the run's seed). A proposal that was never
   run (outside the editable files) is never a node: a child of it would inherit its edits.
"""

from __future__ import annotations

import math
import random
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .config import TargetSpec
from .experiment import Kind, Status
from .ledger import Experiment
from .state import RunState

__all__ = ["STRATEGIES", "Choice", "RatchetStrategy", "Strategy", "TreeStrategy", "make_strategy"]

STRATEGIES = ("ratchet", "tree")
Operator = Literal["draft", "improve", "debug"]

#: the statuses of a node: measured and judged, not failed
_NODE = (Status.KEEP, Status.DISCARD, Status.REBASED)
#: the statuses of a child that failed (reward 0)
_FAILED = (Status.CRASH, Status.TIMEOUT, Status.OVER_BUDGET, Status.INVALID, Status.AGENT_ERROR,
           Status.PRUNED)
#: a run that failed and can be debugged
_DEBUGGABLE = (Status.CRASH, Status.TIMEOUT, Status.OVER_BUDGET, Status.INVALID)


@dataclass(frozen=True)
class Choice:
    """Where the next proposal starts: a node, and the operator (None under `ratchet`)."""

    parent: Experiment
    operator: Operator | None = None

    def fields(self) -> dict:
        """The ledger fields a row proposed from this choice carries (none under `ratchet`)."""
        if self.operator is None:
            return {}
        return {"node_parent": self.parent.id, "operator": self.operator}


class Strategy(ABC):
    """What the loop asks of a strategy: a parent and an operator for the next proposal, and
    every row as it is queued or finished."""

    name: str = "strategy"

    @abstractmethod
    def choose(self, busy: Iterable[Experiment] = ()) -> Choice:
        """The node and operator for the next proposal. `busy`: the parents of proposals being
        made right now (not rows yet)."""

    def record(self, e: Experiment) -> None:  # noqa: B027
        """A row was queued, or reached its final status (may be called more than once)."""


class RatchetStrategy(Strategy):
    """Every proposal starts from the best."""

    name = "ratchet"

    def __init__(self, state: RunState):
        self.state = state

    def choose(self, busy: Iterable[Experiment] = ()) -> Choice:
        assert self.state.incumbent is not None
        return Choice(self.state.incumbent)


class TreeStrategy(Strategy):
    """AIDE's operators over a bounded population, chosen by UCB1 on improvement (see above)."""

    name = "tree"

    def __init__(self, state: RunState, spec: TargetSpec, noise: Callable[[], float | None],
                 seed: int = 0):
        self.state = state
        self.spec = spec
        self.settings = spec.tree
        self.constraints = spec.parsed_constraints
        self.noise = noise
        self.sign = 1.0 if spec.direction == "maximize" else -1.0
        self.rng = random.Random(seed * 1_000_003 + state.next_seq)
        self.population: dict[int, Experiment] = {}          # id -> node
        self.children: dict[int, dict[int, Experiment]] = {}  # node id -> {child id: row}
        self.debuggable: deque[Experiment] = deque(maxlen=self.settings.population)
        self.debug_chain: dict[int, int] = {}                # failed id -> debugs in a row
        self.steps_back: dict[int, int] = {}                 # node id -> worse steps in a row
        self._replay_sigma: tuple[float | None] | None = (self.noise() or None,)
        for e in state.rows.values():                        # resume: replay the ledger
            self.record(e)
        self._replay_sigma = None                            # (the noise of now, once)

    # -- what the loop tells ----------------------------------------------------------------
    def record(self, e: Experiment) -> None:
        if e.node_parent is not None:
            # children are counted for the population and the failed nodes open to a debug
            siblings = self.children.get(e.node_parent)
            if siblings is None and e.node_parent in self.debug_chain:
                siblings = self.children.setdefault(e.node_parent, {})
            if siblings is not None:
                siblings[e.id] = e
                while len(siblings) > self.settings.window:
                    del siblings[next(iter(siblings))]
        if self._is_node(e):
            self._admit(e)
        elif e.status in _DEBUGGABLE and self._ran(e) and e.id not in self.debug_chain:
            parent = e.node_parent
            self.debug_chain[e.id] = (1 + self.debug_chain.get(parent, 0)
                                      if e.operator == "debug" and parent is not None else 0)
            self.debuggable.append(e)

    def _is_node(self, e: Experiment) -> bool:
        if e.status not in _NODE or e.metric is None or not math.isfinite(e.metric):
            return False
        if e.kind not in (Kind.BASELINE, Kind.CANDIDATE, Kind.REBASE) or not e.commit_sha:
            return False
        return all(c.check(e.metrics or {}) is None for c in self.constraints)

    @staticmethod
    def _ran(e: Experiment) -> bool:
        # a proposal refused before running (files outside the editable globs) has no start
        return e.kind == Kind.CANDIDATE and bool(e.commit_sha) and e.started is not None

    def _admit(self, e: Experiment) -> None:
        if e.id in self.population:
            return
        sigma = self._sigma()
        if e.id not in self.steps_back:
            parent = self.state.rows.get(e.node_parent) if e.node_parent is not None else None
            worse = parent is not None and self._is_node(parent) and \
                (self.reward(parent, e, sigma) or 0.0) < 0.5
            self.steps_back[e.id] = 1 + self.steps_back.get(parent.id, 0) if worse else 0
        must = e.id == self._root_id() or e is self.state.incumbent
        if self.steps_back[e.id] > self.settings.max_steps_back and not must:
            return
        self.population[e.id] = e
        self.children.setdefault(e.id, {})
        if len(self.population) <= self.settings.population:
            return
        keep = {self._root_id(), self.state.incumbent.id if self.state.incumbent else None}
        out = min((n for n in self.population.values() if n.id not in keep),
                  key=lambda n: (self._lower(n, sigma), n.id))
        del self.population[out.id]
        self.children.pop(out.id, None)

    # -- the choice ---------------------------------------------------------------------------
    def choose(self, busy: Iterable[Experiment] = ()) -> Choice:
        root = self.state.baseline
        assert root is not None and self.state.incumbent is not None
        for must in (root, self.state.incumbent):   # a holdout revert restores an older best
            self._admit(must)
        busy_ids = [b.id for b in busy]
        debug = self._debug_candidate(busy_ids)
        if debug is not None and self.rng.random() < self.settings.debug_prob:
            return Choice(debug, "debug")
        drafts = len(self.children.get(root.id, {})) + busy_ids.count(root.id)
        if drafts < self.settings.drafts:
            return Choice(root, "draft")
        best = max(self.scores(busy_ids), key=lambda s: s[0])[1]
        return Choice(best, "draft" if best.id == root.id else "improve")

    def _debug_candidate(self, busy: list[int]) -> Experiment | None:
        for e in reversed(self.debuggable):
            if (not self.children.get(e.id) and e.id not in busy
                    and self.debug_chain.get(e.id, 0) < self.settings.max_debug_depth):
                return e
        return None

    def scores(self, busy: Iterable[int] = ()) -> list[tuple[tuple[float, float, int], Experiment]]:
        """Every node of the population with its UCB score and tie-breaks (rule 5); `busy`:
        ids of the parents of proposals being made."""
        sigma = self._sigma()
        nodes = self.population
        busy = list(busy)
        stats = {}
        for n in nodes.values():
            rewards = [self.reward(n, c, sigma) for c in self.children.get(n.id, {}).values()]
            rewards += [0.5] * busy.count(n.id)
            counted = [r for r in rewards if r is not None]
            stats[n.id] = (sum(counted), len(counted))
        total = sum(k for _, k in stats.values())
        c = self.settings.exploration
        out = []
        for n in nodes.values():
            s, k = stats[n.id]
            q = (self._own_reward(n, sigma) + s) / (1 + k)
            ucb = q + c * math.sqrt(math.log(1 + total) / (1 + k))
            out.append(((ucb, self._lower(n, sigma), -n.id), n))
        return out

    def reward(self, node: Experiment, child: Experiment, sigma: float | None) -> float | None:
        """What one child earned its parent (rule 4); None for an interrupted one."""
        if child.status == Status.INTERRUPTED:
            return None
        if child.status in (Status.RUNNING, Status.PENDING):
            return 0.5
        if not self._is_node(child):
            return 0.0 if child.status in _FAILED or child.status == Status.DISCARD else None
        vc, vn = self.state.sample(child).values, self.state.sample(node).values
        if not vc or not vn:
            return 0.5
        d = self.sign * (sum(vc) / len(vc) - sum(vn) / len(vn))
        if not sigma:
            return 1.0 if d > 0 else 0.5 if d == 0 else 0.0
        z = d / (sigma * math.sqrt(1 / len(vc) + 1 / len(vn)))
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    def _own_reward(self, n: Experiment, sigma: float | None) -> float:
        """What n earned its own parent: the first observation of its score (0.5 without a
        measured parent: the root, a debug's fix)."""
        parent = self.state.rows.get(n.node_parent) if n.node_parent is not None else None
        if parent is None or not self._is_node(parent):
            return 0.5
        r = self.reward(parent, n, sigma)
        return 0.5 if r is None else r

    # -- values -------------------------------------------------------------------------------
    def _sigma(self) -> float | None:
        if self._replay_sigma is not None:
            return self._replay_sigma[0]
        return self.noise() or None

    def _lower(self, n: Experiment, sigma: float | None) -> float:
        values = self.state.sample(n).values
        if not values:
            return -math.inf
        v = self.sign * sum(values) / len(values)
        return v - (sigma / math.sqrt(len(values)) if sigma else 0.0)

    def _root_id(self) -> int | None:
        return self.state.baseline.id if self.state.baseline else None


def make_strategy(name: str, state: RunState, spec: TargetSpec,
                  noise: Callable[[], float | None], seed: int = 0) -> Strategy:
    """The strategy named `name` (one of STRATEGIES; the CLI and the config check it)."""
    if name == "tree":
        return TreeStrategy(state, spec, noise, seed)
    return RatchetStrategy(state)
