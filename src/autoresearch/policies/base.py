"""The acceptance-policy interface: decide keep, discard or "measure again".

A policy sees the measurements of a candidate and of the incumbent (the current best) and returns
a Decision. Greedy decides after one run; a statistical policy may ask for more runs of either,
which the loop schedules as `repeat` experiments linked to the candidate and then asks again.

Values arrive in the metric's own units; `direction` says which way is better. Every decision
carries its evidence (runs, means, spread, statistic, p-value) so the ledger can show why.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import PolicySettings


class Verdict(str, enum.Enum):
    KEEP = "keep"
    DISCARD = "discard"
    MORE = "more"            # measure again; `rerun` says whom


@dataclass
class Sample:
    """Every finite measurement of one commit, plus its code size for the simplicity tie-break."""

    values: list[float]             # oldest first
    lines: int = 0
    #: how many of the first values are the runs that selected this commit as the best (they
    #: are biased by the winner's curse); 0 when it was never selected (the baseline)
    selection: int = 0
    #: when each value was measured, as experiment numbers (same order as `values`); empty when
    #: unknown. The policy compares only runs made under comparable conditions.
    at: list[int] = field(default_factory=list)
    #: how much better than the truth the selection runs' mean is thought to be (the winner's
    #: curse), in the metric's units, > 0 = they look better than they are; a policy that
    #: shrinks its keeps records it in the keep's evidence as `shrink`
    shrink: float = 0.0
    #: the seed (AUTORESEARCH_SEED) of each value (same order as `values`); empty when unknown.
    #: Runs of two commits at one seed share the part of the noise that follows the seed.
    seeds: list[int] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean(self) -> float:
        return sum(self.values) / len(self.values)


@dataclass(frozen=True)
class FirstRun:
    """An earlier candidate's first run against the best of its time: one noisy draw of what
    a proposal does, from which a policy may learn the run's distribution of effects."""

    effect: float           # candidate minus best, signed so that > 0 is better, metric units
    sigma: float            # the noise sd of one run where that comparison was made
    best_runs: int          # runs of the best behind that comparison
    #: the variance of effect / sigma as measured (1 + 1/best_runs for independent runs; less
    #: for a paired comparison at shared seeds); None: 1 + 1/best_runs
    var: float | None = None


@dataclass(frozen=True)
class SeededGroup:
    """One commit's runs: values, the seed of each (AUTORESEARCH_SEED) and when each was made."""

    values: tuple[float, ...]
    seeds: tuple[int, ...]
    at: tuple[int, ...] = ()       # experiment numbers; () when unknown


#: the replicate groups a policy reads: the latest this many commits measured twice or more (by
#: their first measurement). The noise where the run is now is in its recent commits, and a
#: decision then costs the same at experiment 100,000 as at experiment 100.
RECENT_GROUPS = 200
#: the seed fit (policies/pairing.py) uses only commits whose runs were all made within this
#: many experiments (a commit measured over a longer span may straddle a change of conditions);
#: the run state does not even build the others
FIT_SPAN = 16


@dataclass
class PolicyContext:
    direction: Literal["minimize", "maximize"]
    settings: PolicySettings
    #: the groups of repeated measurements of this run (one list per commit with two or more
    #: runs), ordered by each commit's first measurement, oldest first, for the noise estimate;
    #: the policies read the latest RECENT_GROUPS of them, and the run state passes no more
    replicate_groups: list[list[float]] = field(default_factory=list)
    #: the first runs of the candidates judged so far, oldest first (a policy records one in
    #: its evidence as `first_run`; the judge collects them)
    first_runs: list[FirstRun] = field(default_factory=list)
    #: the commits with two or more runs, with the seed of each run, for the share of the noise
    #: that follows the seed (policies/pairing.py), in the same order (the latest RECENT_GROUPS
    #: are read); empty when seeds are unknown
    seeded_groups: list[SeededGroup] = field(default_factory=list)


@dataclass
class Estimate:
    """The best's value as a policy reports it, with its uncertainty. Every policy fills it.

    `sigma` is the run-to-run noise sd of one measurement (pooled over the run's repeated
    measurements), None only while nothing was measured twice; the pruner uses it.
    """

    mean: float
    n: int
    sem: float | None = None            # standard error of `mean`
    sd: float | None = None             # spread of the runs behind `mean`
    sigma: float | None = None          # noise sd of one run
    selection_runs: int = 0             # runs left out because they selected it (winner's curse)
    since: int | None = None            # the experiment number the runs behind `mean` start at

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pooled_sigma(groups: list[list[float]]) -> float | None:
    """The within-group sd pooled over groups of repeated measurements (None without any)."""
    ss = sum(sum((v - sum(g) / len(g)) ** 2 for v in g) for g in groups if len(g) >= 2)
    df = sum(len(g) - 1 for g in groups if len(g) >= 2)
    return math.sqrt(ss / df) if df > 0 else None


@dataclass
class Decision:
    verdict: Verdict
    reason: str
    rerun: Literal["candidate", "incumbent"] | None = None
    evidence: dict[str, Any] = field(default_factory=dict)


class Policy(ABC):
    name: str = "policy"

    def baseline_runs(self, settings: PolicySettings) -> int:
        """How many times the baseline is measured before any candidate (at most)."""
        return 1

    def baseline_complete(self, values: list[float], settings: PolicySettings) -> bool:
        """Whether the baseline's runs so far suffice (a deterministic metric needs no more)."""
        return len(values) >= self.baseline_runs(settings)

    def remeasure_best(self, incumbent: Sample, now: int, settings: PolicySettings,
                       resumed: bool = False) -> bool:
        """Whether the best should be measured again now, before more candidates (drift watch):
        `now` is the number the next experiment gets; `resumed` is true once when a run resumes."""
        return False

    @abstractmethod
    def decide(self, candidate: Sample, incumbent: Sample, ctx: PolicyContext) -> Decision:
        """Judge a candidate against the incumbent."""

    def current(self, incumbent: Sample, ctx: PolicyContext) -> tuple[list[float], list[int]]:
        """The best's runs made under the conditions of now (values, at); by default all."""
        return list(incumbent.values), list(incumbent.at)

    def estimate(self, incumbent: Sample, ctx: PolicyContext) -> Estimate:
        """The best's value as reported: mean and uncertainty (not the luckiest draw)."""
        n = incumbent.n
        mean = incumbent.mean
        sigma = pooled_sigma(ctx.replicate_groups[-RECENT_GROUPS:])
        if sigma is None:
            sigma = pooled_sigma([list(incumbent.values)])
        if n < 2:
            return Estimate(mean, n, None, None, sigma)
        sd = math.sqrt(sum((v - mean) ** 2 for v in incumbent.values) / (n - 1))
        return Estimate(mean, n, sd / math.sqrt(n), sd, sigma)
